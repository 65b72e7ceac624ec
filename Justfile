# wgmesh developer tasks. `just --list` shows them.

# Run the whole test suite (needs root for the network-namespace tests).
test:
    cargo test

# Format check and clippy with warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings

# Print throughput and latency figures (server vs bare tiny_http, STUN answers/s).
bench:
    cargo bench --bench server
    cargo bench --bench stun

# Run the coordination server on its embedded JSON store (./peers.json by default here).
run *ARGS:
    cargo run --release -- server --state ./peers.json {{ARGS}}

# What CI runs.
ci:
    bash .ci/run
