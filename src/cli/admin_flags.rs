//! The two flags every admin command takes (`token`, `peers`, `policy`, `device`, `routes`),
//! written once.

/// Declares an admin command's argument struct with `--server` and `--admin-secret-file`
/// after its own fields. argh cannot flatten one struct into another and each flag's doc
/// comment is its help text, so the shared pair lives here once and reads the same in every
/// command's `--help`. The expansion site must have `ServerUrl`, `PathBuf` and
/// `default_server` in scope.
macro_rules! with_admin_flags {
    ($(#[$meta:meta])* pub struct $name:ident { $($own:tt)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($own)*
            /// coordination server (default http://127.0.0.1:8080)
            #[argh(option, default = "default_server()")]
            server: ServerUrl,
            /// admin secret file (default: admin.secret in the server's default state
            /// folder ~/.config/wireguard-mesh, else /var/lib/wgmesh, the server unit's)
            #[argh(option)]
            admin_secret_file: Option<PathBuf>,
        }
    };
}

pub(crate) use with_admin_flags;
