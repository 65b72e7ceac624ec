//! The flags `up` and `sync` share, written once.

/// Declares an argument struct for `up` or `sync` with the flags both take (server, identity,
/// exit node, subnet routes, paths, target OS) before its own. argh has no way to flatten one
/// struct into another and each flag's doc comment is its help text, so the shared fields
/// live here once (and one macro in `mod.rs` turns them into `Overrides`).
macro_rules! with_agent_flags {
    ($(#[$meta:meta])* pub struct $name:ident { $($own:tt)* }) => {
        $(#[$meta])*
        pub struct $name {
            /// coordination server, e.g. http://198.18.0.1:8080 (remembered in the config); repeat
            /// it for replicas of one cluster: the agent sticks to one and fails over to the next
            #[argh(option)]
            server: Vec<ServerUrl>,
            /// PEM file of the CA certificate(s) the server's HTTPS certificate must chain to,
            /// replacing the bundled public roots (for a private CA or a self-signed server)
            #[argh(option)]
            ca: Option<PathBuf>,
            /// client config file (default ~/.config/wireguard-mesh/client.json, mode 0600)
            #[argh(option)]
            config: Option<PathBuf>,
            /// name of the WireGuard interface (default wg0)
            #[argh(option)]
            interface: Option<InterfaceName>,
            /// UDP port WireGuard listens on (default 51820)
            #[argh(option)]
            listen_port: Option<u16>,
            /// endpoint other peers should dial, IP:PORT (default: the address the server sees)
            #[argh(option)]
            endpoint: Option<Endpoint>,
            /// hostname to register (default: this machine's)
            #[argh(option)]
            hostname: Option<Hostname>,
            /// join token for this key's first registration (or --token-file, or env WGMESH_TOKEN,
            /// which keep it out of shell history); not needed once registered
            #[argh(option)]
            token: Option<String>,
            /// file holding the join token
            #[argh(option)]
            token_file: Option<PathBuf>,
            /// the server's public key, pinned up front; default: the one pinned at registration, or
            /// learned from the server on first use
            #[argh(option)]
            server_key: Option<PublicKey>,
            /// offer this machine as an exit node (give it on every run; without it the machine stops
            /// being one)
            #[argh(switch)]
            exit_node: bool,
            /// send all internet traffic through this exit node (hostname, mesh address or peer id;
            /// remembered; "none" clears it)
            #[argh(option)]
            use_exit_node: Option<ExitChoice>,
            /// while the chosen exit node is offline: block (default: nothing leaks) or direct
            #[argh(option)]
            exit_fallback: Option<ExitFallback>,
            /// networks this node routes for the mesh, e.g. 192.168.10.0/24,fd00:10::/64
            /// (remembered; "none" clears it; each needs approval: `wgmesh routes approve`)
            #[argh(option)]
            advertise_routes: Option<PrefixList>,
            /// masquerade mesh traffic into the advertised networks: on (default) or off (the
            /// networks' router then needs a route back to the mesh through this node)
            #[argh(option)]
            snat_subnet_routes: Option<OnOff>,
            /// use the networks other nodes advertise (the approved parts the policy grants
            /// this node; give it on every run)
            #[argh(switch)]
            accept_routes: bool,
            /// also advertise the prefixes a routing daemon puts in this kernel table, following
            /// them as they come and go (remembered; "none" stops)
            #[argh(option)]
            routes_from_table: Option<TableChoice>,
            /// only these prefixes (and what lies inside them) are advertised from that table
            #[argh(option)]
            routes_from_table_allow: Option<PrefixList>,
            /// copy the accepted routes and the mesh network into this kernel table for a routing
            /// daemon to announce (remembered; "none" stops)
            #[argh(option)]
            routes_to_table: Option<TableChoice>,
            /// tunnel MTU (remembered; 0 restores the default: the default route's interface MTU
            /// minus 80 on macOS and Windows, 1420 on Linux)
            #[argh(option)]
            mtu: Option<u16>,
            /// seconds data may go unanswered on a direct path before the peer's traffic goes back
            /// through the server's relay (default 15; up checks a path quiet under data after
            /// 1 s and leaves it within about 2 s); every peer starts on the relay and goes
            /// direct once a probe proves the direct path
            #[argh(option, default = "15")]
            relay_after: u64,
            /// seconds between probes of a relayed peer's direct path after the first six in its
            /// first 25 s (default 300); a peer that moves is probed again at once
            #[argh(option, default = "300")]
            direct_probe_interval: u64,
            /// whose commands to produce: linux, macos or windows (default: this OS)
            #[argh(option)]
            os: Option<TargetOs>,
            $($own)*
        }
    };
}

pub(super) use with_agent_flags;
