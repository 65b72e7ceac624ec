# wgmesh developer tasks. `just --list` shows them.

# Run the whole test suite (needs root for the network-namespace tests).
test:
    cargo test --no-fail-fast

# Format check and clippy with warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings

# Print throughput and latency figures (server vs bare tiny_http, STUN answers/s, the
# connection layer with 10,000 idle or parked connections, mesh DNS queries/s vs dnsmasq,
# registrations/s and heartbeats/s on the JSON store vs PostgreSQL replicas and one change's
# fan-out over two replicas, relay vs direct
# vs socat, and live sync at 10,000 nodes and in a 10-node namespace mesh; the relay and mesh
# benches need root for their network namespaces).
bench:
    cargo bench --bench server
    cargo bench --bench stun
    cargo bench --bench scale
    cargo bench --bench dns
    cargo bench --bench replicas
    cargo bench --bench relay
    cargo bench --bench live_sync
    cargo bench --bench console

# Run the coordination server on its embedded JSON store, in the default state folder
# (~/.config/wireguard-mesh), where `wgmesh token create` finds its admin secret.
run *ARGS:
    cargo run --release -- server {{ARGS}}

# Install the binary in /usr/local/bin (where the units expect it), the systemd units and
# the manual page (run with sudo, or as root; PREFIX=/usr/local).
install PREFIX="/usr/local":
    cargo build --release --locked
    install -m 0755 target/release/wgmesh {{PREFIX}}/bin/wgmesh
    install -d {{PREFIX}}/share/man/man1
    install -m 0644 man/wgmesh.1 {{PREFIX}}/share/man/man1/wgmesh.1
    install -d /etc/systemd/system
    install -m 0644 etc/wgmesh-server.service etc/wgmesh.service etc/wgmesh-sync.service etc/wgmesh-sync.timer /etc/systemd/system/
    -systemctl daemon-reload

# What CI runs.
ci:
    bash .ci/run

# Fuzz every parser of untrusted input for SECS seconds each (cargo-fuzz; needs
# `cargo install cargo-fuzz --locked`). Stable Rust only here, so RUSTC_BOOTSTRAP=1 lets
# cargo-fuzz use the nightly-only sanitizer flags. New inputs go to fuzz/corpus/ (ignored by
# git); a crash is saved in fuzz/artifacts/TARGET/ and stops the run: copy it into
# fuzz/seeds/TARGET/ so `cargo test` replays it, and add a unit test beside the fix.
fuzz SECS="60":
    #!/usr/bin/env bash
    set -euo pipefail
    cd fuzz
    for target in request_json http_requests stun_messages wg_dump dns_query relay_datagrams; do
        mkdir -p corpus/$target
        echo "== fuzzing $target for {{SECS}} s"
        RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" "corpus/$target" "seeds/$target" \
            -- -max_total_time={{SECS}} -rss_limit_mb=2048
    done
