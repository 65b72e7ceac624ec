//! Single sign-on against a real OpenID provider: panva's `oidc-provider` (tests/oidc/,
//! pinned; CI installs it with `npm ci`) runs with users and groups of its own in a lab
//! namespace beside the coordination server, and a headless Chromium plays the person who
//! logs in. Covers `wgmesh up --login` by the code + PKCE flow and by the device flow, tags
//! from groups, a refused outsider, the console's login, a provider that is down (the mesh
//! keeps running) and a provider that rotated its key.
//!
//! Needs root, the lab tools, node + the provider's node_modules, chromium and
//! chromium-driver; fails (never skips) without them. Forged ID tokens are refused in the
//! unit tests of `src/server/sso/verify.rs`.

mod common;

use common::browser::Browser;
use common::netns::{root_subnet, Lab, MeshNode, FAST_AGENT};
use common::postgres::PgCluster;
use common::wgmesh_bin;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CLIENT_ID: &str = "wgmesh-lab";
const SECRET: &str = "lab-client-secret";

fn provider_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
    assert!(
        dir.join("node_modules/oidc-provider").is_dir(),
        "the test OpenID provider is not installed: run `npm ci` in {} (CI does)",
        dir.display()
    );
    dir
}

/// One lab: a server namespace holding the provider and the coordination server, plugged
/// into the root namespace so the browser reaches both.
struct SsoLab {
    lab: Lab,
    srv: String,
    net: String,
    provider: Option<usize>,
    device_flow: bool,
    /// The provider follows OpenID Connect strictly: email and groups only in userinfo.
    claims_in_userinfo_only: bool,
    starts: usize,
    /// The replica store the server uses instead of its JSON file, when the test asks.
    pg: Option<PgCluster>,
    /// The (first) server's child index.
    server: usize,
}

impl SsoLab {
    /// A lab whose provider offers the device flow or not, puts the scopes' claims in the ID
    /// token or only in userinfo, and whose server keeps its registry in PostgreSQL (`pg`)
    /// or in its JSON file.
    fn new(
        label: &str,
        net: String,
        device_flow: bool,
        claims_in_userinfo_only: bool,
        pg: bool,
    ) -> SsoLab {
        let dir = provider_dir();
        let mut lab = Lab::new(label);
        let srv = lab.host("srv", &format!("{net}.1/24"));
        lab.plug_in_root(&format!("{net}.254/24"));
        let policy = json!({
            "allow": [{"from": ["*"], "to": ["*"]}],
            "identities": {
                "join": [
                    {"email_domain": "example.com", "tags": ["tag:staff"]},
                    {"group": "/engineering", "tags": ["tag:dev"]}
                ],
                "admins": [{"group": "wgmesh-admins"}]
            }
        });
        std::fs::write(lab.dir.path().join("policy.json"), policy.to_string()).unwrap();
        std::fs::write(lab.dir.path().join("client.secret"), SECRET).unwrap();
        assert!(dir.join("provider.mjs").is_file());
        let mut me = SsoLab {
            lab,
            srv,
            net,
            provider: None,
            device_flow,
            claims_in_userinfo_only,
            starts: 0,
            pg: None,
            server: 0,
        };
        if pg {
            me.pg = Some(PgCluster::start_in_netns(&me.srv));
        }
        me.start_provider();
        me.server = me.start_server();
        me
    }

    fn issuer(&self) -> String {
        format!("http://{}.1:9090", self.net)
    }

    fn server_url(&self) -> String {
        format!("http://{}.1:8080", self.net)
    }

    /// Starts (or restarts, with a new signing key) the provider.
    fn start_provider(&mut self) {
        self.starts += 1;
        let config = json!({
            "issuer": self.issuer(),
            "host": format!("{}.1", self.net),
            "port": 9090,
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
            "redirect_uris": [
                format!("{}/sso/callback", self.server_url()),
                format!("http://{}.1:8081/sso/callback", self.net),
            ],
            "device_flow": self.device_flow,
            "claims_in_userinfo_only": self.claims_in_userinfo_only,
            "users": {
                "alice": {"email": "alice@example.com", "email_verified": true,
                          "groups": ["/engineering"]},
                "eve": {"email": "eve@evil.test", "email_verified": true, "groups": ["/engineering-not"]},
                "root1": {"email": "ops@example.com", "email_verified": true,
                          "groups": ["wgmesh-admins"]}
            }
        });
        let path = self.lab.dir.path().join("provider.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let script = provider_dir().join("provider.mjs").display().to_string();
        let log = format!("provider{}.log", self.starts);
        let srv = self.srv.clone();
        let index = self
            .lab
            .spawn(&srv, &["node", &script, &path.display().to_string()], &log);
        self.provider = Some(index);
        self.lab
            .eventually(Duration::from_secs(30), "the provider listens", || {
                self.lab.log(&log).contains("oidc-provider listening")
            });
    }

    fn stop_provider(&mut self) {
        let index = self.provider.take().expect("a provider runs");
        self.lab.child(index).kill().unwrap();
        self.lab.child(index).wait().unwrap();
    }

    fn start_server(&mut self) -> usize {
        self.start_server_on(8080, "server.log")
    }

    /// Starts a server listening on `port` (a second replica on the same store: 8081).
    fn start_server_on(&mut self, port: u16, log: &str) -> usize {
        let state = self
            .lab
            .dir
            .path()
            .join(format!("peers-{port}.json"))
            .display()
            .to_string();
        let policy = self
            .lab
            .dir
            .path()
            .join("policy.json")
            .display()
            .to_string();
        let secret = self
            .lab
            .dir
            .path()
            .join("client.secret")
            .display()
            .to_string();
        let listen = format!("{}.1:{port}", self.net);
        let issuer = self.issuer();
        let srv = self.srv.clone();
        let store = self.pg.as_ref().map(PgCluster::url);
        let mut args = vec![
            wgmesh_bin(),
            "server",
            "--listen",
            &listen,
            "--state",
            &state,
            "--policy",
            &policy,
            "--oidc-issuer",
            &issuer,
            "--oidc-client-id",
            CLIENT_ID,
            "--oidc-client-secret-file",
            &secret,
            "--oidc-scopes",
            "openid email profile groups",
            "--heartbeat-timeout",
            "5",
            "--log-level",
            "debug",
        ];
        if let Some(url) = &store {
            args.extend(["--store", url.as_str()]);
        }
        // A second replica in the same namespace takes other UDP ports than the first's.
        let udp = format!("{}.1:{}", self.net, port + 1000);
        if port != 8080 {
            args.extend(["--udp-listen", udp.as_str(), "--udp-alt-port", "0"]);
        }
        let index = self.lab.spawn(&srv, &args, log);
        self.lab
            .eventually(Duration::from_secs(20), "the server listens", || {
                self.lab.log(log).contains("listening on")
            });
        index
    }

    /// `wgmesh up --login` on a new node; returns the node and the agent's index.
    fn up_login(&mut self, name: &str, ip: u8) -> (MeshNode, usize) {
        let node = self.lab.mesh_node(name, &format!("{}.{ip}/24", self.net));
        let mut flags: Vec<&str> = FAST_AGENT.to_vec();
        flags.push("--login");
        let server = self.server_url();
        let agent = self
            .lab
            .spawn_up(&node, &server, name, &[], &flags, &format!("{name}.log"));
        (node, agent)
    }

    /// The URL and code the agent printed (the latest, when it started a new login).
    fn printed_login(&self, name: &str) -> (String, String) {
        let log_name = format!("{name}.log");
        let mut found = None;
        self.lab.eventually(
            Duration::from_secs(30),
            "the agent prints a login URL",
            || {
                let log = self.lab.log(&log_name);
                let url = log
                    .lines()
                    .map(str::trim)
                    .rfind(|l| l.starts_with("http://"))
                    .map(str::to_owned);
                let code = log
                    .rsplit("the code ")
                    .next()
                    .filter(|_| log.contains("the code "))
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_owned);
                found = url.zip(code);
                found.is_some()
            },
        );
        found.unwrap()
    }

    fn peers_json(&self) -> Value {
        let secret = self
            .lab
            .dir
            .path()
            .join("admin.secret")
            .display()
            .to_string();
        let server = self.server_url();
        let out = common::netns::must(&[
            wgmesh_bin(),
            "peers",
            "list",
            "--json",
            "--server",
            &server,
            "--admin-secret-file",
            &secret,
        ]);
        serde_json::from_str(&out).unwrap()
    }

    fn peer(&self, hostname: &str) -> Option<Value> {
        self.peers_json()["peers"]
            .as_array()?
            .iter()
            .find(|p| p["hostname"] == hostname)
            .cloned()
    }

    /// Waits until `name` has registered and returns its peer view.
    fn joined(&self, name: &str) -> Value {
        let mut found = None;
        self.lab
            .eventually(Duration::from_secs(40), &format!("{name} joins"), || {
                found = self.peer(name).filter(|p| p["online"] == true);
                found.is_some()
            });
        found.unwrap()
    }
}

/// Forgets the browser's session at the provider, so the next login asks who it is.
fn provider_sign_out(b: &Browser, issuer: &str) {
    b.goto(&format!("{issuer}/.well-known/openid-configuration"));
    b.delete_cookies();
}

/// Approves on our login page at `url` and signs in at the provider as `user`.
fn approve_as(b: &Browser, url: &str, user: &str) {
    b.goto(url);
    b.click("#approve");
    provider_sign_in(b, user);
}

/// Waits for our page to say how the login ended, and returns what it says.
fn outcome(b: &Browser) -> String {
    b.wait_until(Duration::from_secs(20), "the login ends", |b| {
        b.find("#outcome").is_some()
    });
    b.text("#outcome")
}

/// Signs in at the provider's own login page as `user`.
fn provider_sign_in(b: &Browser, user: &str) {
    b.wait_until(Duration::from_secs(20), "the provider's login form", |b| {
        b.find("#login").is_some()
    });
    b.fill("#login", user);
    b.fill("#password", "any");
    b.click("#sign-in");
}

fn tags(peer: &Value) -> Vec<String> {
    peer["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

/// Waits up to `limit` for agent `agent` to exit, and returns its exit code.
fn exit_code(lab: &mut Lab, agent: usize, limit: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = lab.child(agent).try_wait().unwrap() {
            return status.code();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent {agent} still runs after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn up_login_joins_through_the_browser_flow_and_the_provider_decides_who_and_with_what_tags() {
    let mut s = SsoLab::new("sso", root_subnet(1), false, false, false);
    let browser = Browser::start();

    // alice (group /engineering, @example.com) joins a machine: our page shows the machine
    // and the code it printed, then the provider's login, then the machine is in.
    let (n1, _) = s.up_login("n1", 11);
    let (url, code) = s.printed_login("n1");
    assert!(url.contains("/sso/browser/"), "{url}");
    browser.goto(&url);
    assert_eq!(browser.text("#user-code"), code);
    assert_eq!(browser.text("#hostname"), "n1");
    browser.click("#approve");
    provider_sign_in(&browser, "alice");
    assert_eq!(outcome(&browser), "Logged in");
    let peer = s.joined("n1");
    assert_eq!(peer["owner"], "alice@example.com", "{peer}");
    assert_eq!(tags(&peer), ["tag:dev", "tag:staff"], "{peer}");
    assert!(s
        .lab
        .log("n1.log")
        .contains("Logged in as alice@example.com"));
    // The default --login-expiry: 180 days after the login.
    let login = humantime::parse_rfc3339(peer["owner_login"].as_str().unwrap()).unwrap();
    let expires = humantime::parse_rfc3339(peer["owner_login_expires"].as_str().unwrap()).unwrap();
    assert_eq!(
        expires.duration_since(login).unwrap(),
        Duration::from_secs(180 * 86_400)
    );
    let audit = std::fs::read_to_string(s.lab.dir.path().join("audit.log")).unwrap();
    assert!(
        audit.contains("owned by alice@example.com (single sign-on)"),
        "{audit}"
    );

    // A second machine, joined with a token, to ping across the provider's outage.
    let token = s.lab.create_token(&s.srv.clone(), &s.server_url(), &[]);
    let t1 = s.lab.mesh_node("t1", &format!("{}.21/24", s.net));
    let server = s.server_url();
    s.lab.spawn_up(
        &t1,
        &server,
        "t1",
        &[format!("WGMESH_TOKEN={token}")],
        &FAST_AGENT,
        "t1.log",
    );
    s.joined("t1");

    // eve is from another domain and not in the group: refused, with the rule named, on
    // the page and by the agent, which stops.
    let (_, eve_agent) = s.up_login("n2", 12);
    let (url, _) = s.printed_login("n2");
    provider_sign_out(&browser, &s.issuer());
    approve_as(&browser, &url, "eve");
    assert_eq!(outcome(&browser), "Login failed");
    let page = browser.text("main");
    assert!(page.contains("eve@evil.test may not join"), "{page}");
    assert!(
        page.contains("identities.join[0] email_domain \"example.com\""),
        "{page}"
    );
    // Exit code 3: the server refused (README "Commands and exit codes").
    assert_eq!(
        exit_code(&mut s.lab, eve_agent, Duration::from_secs(20)),
        Some(3)
    );
    let log = s.lab.log("n2.log");
    assert!(log.contains("may not join") && log.contains("403"), "{log}");
    assert!(
        s.peer("n2").is_none(),
        "eve's machine must not be registered"
    );

    // The console through the same provider: root1 is in wgmesh-admins; the peer page
    // names n1's owner.
    provider_sign_out(&browser, &s.issuer());
    browser.goto(&format!("{}/console/login", s.server_url()));
    browser.click("#sso-login");
    provider_sign_in(&browser, "root1");
    browser.wait_until(Duration::from_secs(20), "the console login ends", |b| {
        b.find("#continue").is_some()
    });
    browser.click("#continue");
    browser.wait_until(Duration::from_secs(20), "the peers page", |b| {
        b.url().ends_with("/console/peers")
    });
    browser.goto(&format!(
        "{}/console/peers/{}",
        s.server_url(),
        peer["id"].as_str().unwrap()
    ));
    assert_eq!(browser.text("#owner"), "alice@example.com");
    let audit = std::fs::read_to_string(s.lab.dir.path().join("audit.log")).unwrap();
    assert!(
        audit.contains("single sign-on as ops@example.com"),
        "{audit}"
    );

    // The provider goes down: the mesh keeps working, and a new login is refused at once
    // with 503 and the reason.
    let n1_ip = s.lab.mesh_ip("n1");
    let t1_ip = s.lab.mesh_ip("t1");
    s.stop_provider();
    let (_, down_agent) = s.up_login("n3", 13);
    assert_eq!(
        exit_code(&mut s.lab, down_agent, Duration::from_secs(30)),
        Some(3)
    );
    let log = s.lab.log("n3.log");
    assert!(
        log.contains("503") && log.contains("cannot be used"),
        "{log}"
    );
    assert!(log.contains("keep working"), "{log}");
    s.lab
        .eventually(Duration::from_secs(20), "n1 pings t1", || {
            s.lab.ping(&n1.ns, &t1_ip)
        });
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(s.peer("n1").unwrap()["online"], true, "heartbeats go on");
    assert!(s.lab.ping(&t1.ns, &n1_ip));

    // Back with a new signing key (a rotation): the next login verifies against it.
    s.start_provider();
    let (_, _) = s.up_login("n4", 14);
    let (url, _) = s.printed_login("n4");
    provider_sign_out(&browser, &s.issuer());
    approve_as(&browser, &url, "alice");
    let peer = s.joined("n4");
    assert_eq!(peer["owner"], "alice@example.com", "{peer}");

    // The console's admin (root1, still logged in) ends n4's login with one button.
    browser.goto(&format!(
        "{}/console/peers/{}",
        s.server_url(),
        peer["id"].as_str().unwrap()
    ));
    browser.click("#end-login");
    browser.wait_until(Duration::from_secs(20), "the peer page again", |b| {
        b.text_now("#owner").contains("logged out")
    });
    let peer = s.peer("n4").unwrap();
    assert_eq!(peer["online"], false, "{peer}");
    assert!(peer["owner_logged_out"].is_string(), "{peer}");

    // The provider's answer delivered to another browser than the one that went there (a
    // login forced on somebody else) is refused, and the waiting machine told so.
    let (_, forced_agent) = s.up_login("n5", 15);
    let (url, _) = s.printed_login("n5");
    // Someone goes to the provider from our page (keeping the cookie to themselves) ...
    let no_redirects: ureq::Agent = ureq::Agent::config_builder()
        .max_redirects(0)
        .http_status_as_error(false)
        .build()
        .into();
    let went = no_redirects.get(format!("{url}/go")).call().unwrap();
    assert_eq!(went.status().as_u16(), 303);
    let at_provider = went.headers()["location"].to_str().unwrap().to_owned();
    assert!(at_provider.starts_with(&s.issuer()), "{at_provider}");
    let state = at_provider
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("state="))
        .unwrap()
        .to_owned();
    // ... and the answer arrives in a browser that never went there.
    let mut answer = common::agent()
        .get(format!(
            "{}/sso/callback?code=stolen&state={state}",
            s.server_url()
        ))
        .call()
        .unwrap();
    assert_eq!(answer.status().as_u16(), 401);
    let page = answer.body_mut().read_to_string().unwrap();
    assert!(page.contains("started in another browser"), "{page}");
    assert_eq!(
        exit_code(&mut s.lab, forced_agent, Duration::from_secs(20)),
        Some(3)
    );
    assert!(s.peer("n5").is_none());

    // An admin ends n1's login at once: it goes offline and its heartbeats are refused.
    let secret = s.lab.dir.path().join("admin.secret").display().to_string();
    let id = s.peer("n1").unwrap()["id"].as_str().unwrap().to_owned();
    let out = common::netns::must(&[
        wgmesh_bin(),
        "peers",
        "logout",
        &id,
        "--server",
        &s.server_url(),
        "--admin-secret-file",
        &secret,
    ]);
    assert!(out.contains("must log in again"), "{out}");
    let peer = s.peer("n1").unwrap();
    assert_eq!(peer["online"], false, "{peer}");
    assert!(peer["owner_logged_out"].is_string(), "{peer}");
    s.lab.eventually(
        Duration::from_secs(20),
        "n1 hears that its login ended",
        || s.lab.log("n1.log").contains("an admin ended the login"),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        s.peer("n1").unwrap()["online"],
        false,
        "a heartbeat does not bring it back"
    );
}

#[test]
fn up_login_uses_the_device_flow_when_the_provider_offers_it() {
    // On the PostgreSQL store, so the replica's admission and logout are the ones tested;
    // and with a provider that follows OpenID Connect strictly (its ID token names neither
    // the email nor the groups: they come from userinfo).
    let mut s = SsoLab::new("ssodev", root_subnet(2), true, true, true);
    let browser = Browser::start();
    let (_, _) = s.up_login("d1", 11);
    let (url, code) = s.printed_login("d1");
    assert!(
        url.starts_with(&s.issuer()),
        "the provider's own page: {url}"
    );
    browser.goto(&url);
    browser.wait_until(Duration::from_secs(20), "the device page", |b| {
        b.find("#confirm").is_some() || b.find("#submit-code").is_some()
    });
    if browser.find("#confirm").is_none() {
        browser.fill("#user-code", &code);
        browser.click("#submit-code");
        browser.wait_until(Duration::from_secs(20), "the confirmation", |b| {
            b.find("#confirm").is_some()
        });
    }
    assert_eq!(browser.text("#device-code"), code);
    browser.click("#confirm");
    provider_sign_in(&browser, "alice");
    browser.wait_until(Duration::from_secs(20), "the provider says done", |b| {
        b.find("#device-done").is_some()
    });
    let peer = s.joined("d1");
    assert_eq!(peer["owner"], "alice@example.com", "{peer}");
    assert_eq!(tags(&peer), ["tag:dev", "tag:staff"], "{peer}");
    let log = s.lab.log("server.log");
    assert!(
        log.contains("named no email: read from the provider's userinfo endpoint"),
        "{log}"
    );

    // Ending the login goes through the database too.
    let secret = s.lab.dir.path().join("admin.secret").display().to_string();
    let id = peer["id"].as_str().unwrap().to_owned();
    common::netns::must(&[
        wgmesh_bin(),
        "peers",
        "logout",
        &id,
        "--server",
        &s.server_url(),
        "--admin-secret-file",
        &secret,
    ]);
    let peer = s.peer("d1").unwrap();
    assert_eq!(peer["online"], false, "{peer}");
    assert!(peer["owner_logged_out"].is_string(), "{peer}");
    let again = common::netns::run(&[
        wgmesh_bin(),
        "peers",
        "logout",
        "peer-notapeer",
        "--server",
        &s.server_url(),
        "--admin-secret-file",
        &secret,
    ]);
    assert_eq!(again.status.code(), Some(3), "an unknown peer is refused");
}

#[test]
fn a_browser_login_started_on_one_replica_is_approved_and_finished_on_another() {
    // Two replicas on one PostgreSQL store and no sticky sessions: the machine asks replica
    // A (8080) for a login and polls A, while its person opens the page on replica B (8081),
    // where the provider sends the browser back too. The login lives in the shared table.
    let mut s = SsoLab::new("ssorep", root_subnet(3), false, false, true);
    s.start_server_on(8081, "server-b.log");
    let browser = Browser::start();
    let (_, _) = s.up_login("r1", 11);
    let (url, code) = s.printed_login("r1");
    let on_a = format!("{}/sso/browser/", s.server_url());
    assert!(url.starts_with(&on_a), "{url}");
    let on_b = url.replacen(":8080/", ":8081/", 1);
    browser.goto(&on_b);
    assert_eq!(
        browser.text("#user-code"),
        code,
        "replica B shows A's login"
    );
    browser.click("#approve");
    provider_sign_in(&browser, "alice");
    assert_eq!(outcome(&browser), "Logged in");
    let peer = s.joined("r1");
    assert_eq!(peer["owner"], "alice@example.com", "{peer}");
    assert_eq!(tags(&peer), ["tag:dev", "tag:staff"], "{peer}");
    let b_log = s.lab.log("server-b.log");
    assert!(
        b_log.contains("/sso/callback"),
        "B took the callback:\n{b_log}"
    );
}

#[test]
fn a_login_the_server_forgot_in_a_restart_is_started_again_by_the_agent() {
    // The JSON store keeps logins in memory: a restart forgets them. The waiting agent is
    // told 404, starts a new login by itself and prints its URL; that one works.
    let mut s = SsoLab::new("ssoagain", root_subnet(4), false, false, false);
    let browser = Browser::start();
    let (_, _) = s.up_login("f1", 11);
    let (first, _) = s.printed_login("f1");
    assert_eq!(s.lab.signal(s.server, "TERM"), Some(0));
    s.server = s.start_server_on(8080, "server2.log");
    s.lab.eventually(
        Duration::from_secs(30),
        "the agent starts a new login and prints its URL",
        || {
            s.lab.log("f1.log").contains("no longer knows this login")
                && s.printed_login("f1").0 != first
        },
    );
    let (second, code) = s.printed_login("f1");
    browser.goto(&first);
    assert!(
        browser.text("main").contains("no login"),
        "the old page says the login is gone: {}",
        browser.text("main")
    );
    browser.goto(&second);
    assert_eq!(browser.text("#user-code"), code);
    approve_as(&browser, &second, "alice");
    let peer = s.joined("f1");
    assert_eq!(peer["owner"], "alice@example.com", "{peer}");
}
