//! The operator's console (`/console`), from the outside.
//!
//! Over raw HTTP against the real binary: login and sessions, the CSRF token and Origin
//! check on every change, the auditor who can change nothing, `--no-console`, and strings
//! from peers rendered as text. In a real browser (Debian's Chromium through chromedriver)
//! against real agents in network namespaces: `console_in_a_browser_follows_a_live_mesh`.
//! Needs root for the namespaces; fails, never skips, without chromium or the lab tools.

mod common;

use common::browser::Browser;
use common::netns::{Lab, MeshNode, FAST_AGENT};
use common::{new_key, post, register, wgmesh_bin, ServerProcess, TempDir};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// A browser-like client: keeps the console cookie, follows no redirects.
struct Client {
    base: String,
    agent: ureq::Agent,
    cookie: Option<String>,
}

/// One answer, with the headers a console test looks at.
struct Page {
    status: u16,
    body: String,
    headers: HashMap<String, String>,
}

impl Client {
    fn new(server: &ServerProcess) -> Client {
        Client {
            base: format!("http://{}", server.addr),
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(10)))
                .http_status_as_error(false)
                .max_redirects(0)
                .build()
                .into(),
            cookie: None,
        }
    }

    fn origin(&self) -> String {
        self.base.clone()
    }

    fn answer(&mut self, result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Page {
        let mut r = result.expect("the server answers");
        let headers: HashMap<String, String> = r
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        if let Some(c) = headers.get("set-cookie") {
            let pair = c.split(';').next().unwrap_or("").to_owned();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        Page {
            status: r.status().as_u16(),
            body: r.body_mut().read_to_string().unwrap_or_default(),
            headers,
        }
    }

    fn get(&mut self, path: &str) -> Page {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("Cookie", c);
        }
        let r = req.call();
        self.answer(r)
    }

    /// Posts a form from `origin` (None: no Origin header).
    fn post(&mut self, path: &str, form: &[(&str, &str)], origin: Option<&str>) -> Page {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("Cookie", c);
        }
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        let r = req.send_form(form.iter().copied());
        self.answer(r)
    }

    fn login(&mut self, secret: &str) -> Page {
        let origin = self.origin();
        self.post("/console/login", &[("secret", secret)], Some(&origin))
    }

    /// The CSRF token in the last page this session saw.
    fn csrf(&mut self) -> String {
        let page = self.get("/console/peers");
        let marker = "name=\"csrf\" value=\"";
        let start = page.body.find(marker).expect("a CSRF field") + marker.len();
        page.body[start..].split('"').next().unwrap().to_owned()
    }
}

fn auditor_secret(server: &ServerProcess) -> String {
    std::fs::read_to_string(server.dir().join("auditor.secret"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn login_gives_an_http_only_strict_session_and_every_page_a_strict_csp() {
    let dir = TempDir::new("console-login");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &[]);
    let mut c = Client::new(&server);
    let page = c.get("/console/peers");
    assert_eq!(page.status, 303, "not logged in goes to the login page");
    assert_eq!(page.headers["location"], "/console/login");
    let wrong = c.login("not-the-secret");
    assert_eq!(wrong.status, 401);
    assert!(
        wrong
            .body
            .contains("neither the admin nor the auditor secret"),
        "{}",
        wrong.body
    );
    assert!(c.cookie.is_none());
    let ok = c.login(&server.admin_secret());
    assert_eq!(ok.status, 303);
    let cookie = &ok.headers["set-cookie"];
    for part in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(
        !cookie.contains(&server.admin_secret()),
        "the cookie must not hold the secret"
    );
    for path in [
        "/console/peers",
        "/console/tokens",
        "/console/access",
        "/console/audit",
        "/console/server",
    ] {
        let page = c.get(path);
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        let csp = &page.headers["content-security-policy"];
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert!(
            !page.body.contains("<script>"),
            "{path} has an inline script"
        );
    }
    let csrf = c.csrf();
    let origin = c.origin();
    let out = c.post("/console/logout", &[("csrf", &csrf)], Some(&origin));
    assert_eq!(out.status, 303);
    assert_eq!(
        c.get("/console/peers").status,
        303,
        "the session ended at logout"
    );
}

#[test]
fn changes_need_the_session_csrf_token_and_the_console_origin() {
    let dir = TempDir::new("console-csrf");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &[]);
    let mut c = Client::new(&server);
    c.login(&server.admin_secret());
    let csrf = c.csrf();
    let origin = c.origin();
    let form = [
        ("csrf", csrf.as_str()),
        ("tags", "tag:dev"),
        ("uses", "2"),
        ("expires", "1h"),
    ];
    let forged = c.post("/console/tokens", &form, Some("http://evil.example"));
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(
        forged.body.contains("cross-site request refused"),
        "{}",
        forged.body
    );
    let no_origin = c.post("/console/tokens", &form, None);
    assert_eq!(no_origin.status, 403);
    let no_token = c.post("/console/tokens", &[("tags", "tag:dev")], Some(&origin));
    assert_eq!(no_token.status, 403);
    let tokens = common::admin(&server, "GET", "/admin/tokens", None);
    assert_eq!(
        tokens.json["tokens"].as_array().unwrap().len(),
        0,
        "a forged post made a token"
    );
    let made = c.post("/console/tokens", &form, Some(&origin));
    assert_eq!(made.status, 200, "{}", made.body);
    assert!(made.body.contains("wgm_"), "the secret is shown once");
    assert!(
        made.body.contains("wgmesh up --server"),
        "with the line to paste"
    );
    let tokens = common::admin(&server, "GET", "/admin/tokens", None);
    assert_eq!(tokens.json["tokens"][0]["tags"][0], "tag:dev");
    let audit = std::fs::read_to_string(server.dir().join("audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"token_create\"") && l.contains("\"console:admin\"")),
        "{audit}"
    );
    assert!(
        audit
            .lines()
            .any(|l| l.contains("cross-site request refused")),
        "{audit}"
    );
}

#[test]
fn the_auditor_sees_everything_and_changes_nothing() {
    let dir = TempDir::new("console-auditor");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let key = new_key();
    assert_eq!(register(&server, &key, "watched").status, 200);
    let (_, token_id) = server.create_token(serde_json::json!({"uses": 1}));
    let mut c = Client::new(&server);
    assert_eq!(c.login(&auditor_secret(&server)).status, 303);
    let peers = c.get("/console/peers");
    assert!(peers.body.contains("watched") && peers.body.contains("console:auditor"));
    let tokens = c.get("/console/tokens");
    assert!(tokens.body.contains(&token_id));
    assert!(
        !tokens.body.contains("Create a token") && !tokens.body.contains("Revoke"),
        "the auditor is offered no buttons"
    );
    let csrf = c.csrf();
    let origin = c.origin();
    let id = wgmesh::types::PeerId::for_key(&wgmesh::keys::PublicKey::from_base64(&key).unwrap());
    for path in [
        "/console/tokens".to_owned(),
        format!("/console/tokens/{token_id}/revoke"),
        format!("/console/peers/{id}/remove"),
        "/console/access/reload".to_owned(),
    ] {
        let refused = c.post(&path, &[("csrf", &csrf), ("uses", "1")], Some(&origin));
        assert_eq!(refused.status, 403, "{path}: {}", refused.body);
        assert!(
            refused.body.contains("auditor role"),
            "{path}: {}",
            refused.body
        );
    }
    let tokens = common::admin(&server, "GET", "/admin/tokens", None);
    assert_eq!(tokens.json["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(tokens.json["tokens"][0]["status"], "usable");
    let peers = common::admin(&server, "GET", "/admin/peers", None);
    assert_eq!(
        peers.json["peers"].as_array().unwrap().len(),
        1,
        "the peer is still there"
    );
}

#[test]
fn no_console_flag_turns_it_off() {
    let dir = TempDir::new("console-off");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--no-console"]);
    let mut c = Client::new(&server);
    let page = c.get("/console/login");
    assert_eq!(page.status, 404);
    assert!(page.body.contains("--no-console"), "{}", page.body);
}

#[test]
fn strings_from_peers_render_as_text() {
    let dir = TempDir::new("console-hostile");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    // The most hostile hostname registration allows (letters, digits, '-', '_', '.').
    let label = format!("x{}", "_-a".repeat(20));
    let hostname = format!("{label}.{label}.{label}");
    let key = new_key();
    let reg = register(&server, &key, &hostname);
    assert_eq!(reg.status, 200, "{}", reg.json);
    let id = reg.json["peer_id"].as_str().unwrap().to_owned();
    // A report's version is free text: the place a hostile agent would try.
    let evil = "<img src=x onerror=alert(1)><script>alert(2)</script>";
    let report = serde_json::json!({"peer_id": id, "version": evil, "paths": []});
    let answer = post(&server, "/report", &report.to_string());
    assert_eq!(answer.status, 200, "{}", answer.json);
    let mut c = Client::new(&server);
    c.login(&server.admin_secret());
    for path in ["/console/peers".to_owned(), format!("/console/peers/{id}")] {
        let page = c.get(&path);
        assert_eq!(page.status, 200);
        assert!(page.body.contains(&hostname), "{path}");
        assert!(
            !page.body.contains("<img src=x"),
            "{path}: markup from a peer was not escaped"
        );
        assert!(
            !page.body.contains("<script>alert"),
            "{path}: markup from a peer was not escaped"
        );
        assert!(
            page.body.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{path}"
        );
    }
}

#[test]
fn reports_are_refused_for_another_key_and_when_oversized() {
    let dir = TempDir::new("console-report");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let a = new_key();
    let b = new_key();
    let id_a = register(&server, &a, "a").json["peer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    register(&server, &b, "b");
    let stranger = wgmesh::keys::PublicKey::from_base64(&b).unwrap();
    // Signed by b's key but naming a's id.
    let body = serde_json::json!({"peer_id": id_a, "version": "1", "paths": []}).to_string();
    let refused = common::send_as(
        &server,
        common::private_of(&b).as_ref(),
        "POST",
        "/report",
        &body,
        &[],
    );
    assert_eq!(refused.status, 401, "{}", refused.json);
    let _ = stranger;
    let long = "v".repeat(65);
    let body = serde_json::json!({"peer_id": id_a, "version": long, "paths": []}).to_string();
    let answer = post(&server, "/report", &body);
    assert_eq!(answer.status, 400, "{}", answer.json);
    assert!(
        answer.json["error"].as_str().unwrap().contains("version"),
        "{}",
        answer.json
    );
}

// ---------------------------------------------------------------------------------------
// In a real browser, against real agents in namespaces.

/// The console lab's own subnet: its switch is plugged into this (root) namespace so the
/// browser reaches the server; no other lab uses it.
fn net() -> String {
    common::netns::root_subnet(0)
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn up(lab: &mut Lab, node: &MeshNode, server: &str, token: &str) -> usize {
    let env = [format!("WGMESH_TOKEN={token}")];
    let log = format!("{}.log", node.name);
    lab.spawn_up(node, server, &node.name, &env, &FAST_AGENT, &log)
}

/// The text of `host`'s row on the peers page, read in one go (live updates replace rows).
fn row_text(b: &Browser, host: &str) -> String {
    b.text_now(&format!("#live tr[data-host=\"{host}\"]"))
}

#[test]
fn console_in_a_browser_follows_a_live_mesh() {
    let net = net();
    let mut lab = Lab::new("console");
    let srv = lab.host("srv", &format!("{net}.1/24"));
    lab.plug_in_root(&format!("{net}.254/24"));
    let state = lab.dir.path().join("peers.json").display().to_string();
    let listen = format!("{net}.1:8080");
    lab.spawn(
        &srv,
        &[
            wgmesh_bin(),
            "server",
            "--listen",
            &listen,
            "--udp-listen",
            &format!("{net}.1:3478"),
            "--state",
            &state,
            "--heartbeat-timeout",
            "4",
        ],
        "server.log",
    );
    lab.eventually(Duration::from_secs(20), "the server listens", || {
        lab.log("server.log").contains("listening on")
    });
    let base = format!("http://{listen}");
    let secret_file = lab.dir.path().join("admin.secret").display().to_string();
    let token = common::netns::must(&[
        wgmesh_bin(),
        "token",
        "create",
        "--uses",
        "5",
        "--tag",
        "tag:lab",
        "--server",
        &base,
        "--admin-secret-file",
        &secret_file,
    ]);
    let token = token.trim().to_owned();
    let nodes: Vec<MeshNode> = (0..2)
        .map(|i| lab.mesh_node(&format!("c{i}"), &format!("{net}.{}/24", 11 + i)))
        .collect();
    let mut agents: Vec<usize> = nodes
        .iter()
        .map(|n| up(&mut lab, n, &base, &token))
        .collect();

    let b = Browser::start();
    let shots = screenshots();
    b.goto(&format!("{base}/console"));
    b.wait_until(Duration::from_secs(10), "the login page", |b| {
        b.find("#secret").is_some()
    });
    b.screenshot(&shots.join("login.png"));
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    b.fill("#secret", secret.trim());
    b.click("button[type=submit]");
    b.wait_until(Duration::from_secs(10), "the peers page", |b| {
        b.url().ends_with("/console/peers")
    });
    b.wait_until(Duration::from_secs(30), "both agents listed online", |b| {
        ["c0", "c1"]
            .iter()
            .all(|h| row_text(b, h).contains("online"))
    });
    // Marks this page: a reload would lose the mark, a live update keeps it.
    b.run("window.wgmeshMark = 42; return null;");
    b.screenshot(&shots.join("peers.png"));

    // c1 stops on purpose: it leaves at once; the page shows it offline without a reload.
    lab.signal(agents[1], "TERM");
    b.wait_until(Duration::from_secs(15), "c1 offline on the page", |b| {
        row_text(b, "c1").contains("offline")
    });
    assert_eq!(
        b.run("return window.wgmeshMark;"),
        42,
        "the page was reloaded, not updated"
    );
    agents[1] = up(&mut lab, &nodes[1], &base, &token);
    b.wait_until(Duration::from_secs(30), "c1 back online on the page", |b| {
        row_text(b, "c1").contains("online")
    });
    assert_eq!(
        b.run("return window.wgmeshMark;"),
        42,
        "the page was reloaded, not updated"
    );

    // A token made in the console lets a new machine join; it appears on the peers page.
    b.goto(&format!("{base}/console/tokens"));
    b.fill("input[name=tags]", "tag:new");
    b.fill("input[name=uses]", "1");
    b.click("form.create button[type=submit]");
    b.wait_until(Duration::from_secs(10), "the new token shown", |b| {
        b.find("#token-secret").is_some()
    });
    b.screenshot(&shots.join("tokens.png"));
    let fresh = b.text("#token-secret");
    assert!(fresh.starts_with("wgm_"), "{fresh}");
    assert!(b
        .text("#up-line")
        .contains(&format!("wgmesh up --server {base}")));
    let c2 = lab.mesh_node("c2", &format!("{net}.13/24"));
    up(&mut lab, &c2, &base, &fresh);
    b.goto(&format!("{base}/console/peers"));
    b.run("window.wgmeshMark = 43; return null;");
    let appeared = (0..150).any(|_| {
        std::thread::sleep(Duration::from_millis(200));
        row_text(&b, "c2").contains("online")
    });
    let live = b.run("return document.getElementById('live').innerText;");
    assert!(appeared, "c2 never appeared on the peers page: {live}");
    assert_eq!(b.run("return window.wgmeshMark;"), 43);
    assert!(
        row_text(&b, "c2").contains("tag:new"),
        "{}",
        row_text(&b, "c2")
    );

    // Revoke the lab token from the console.
    b.goto(&format!("{base}/console/tokens"));
    let first = b.text("table.tokens tbody tr td code");
    b.run("window.confirm = () => true; return null;");
    b.click("table.tokens button.danger");
    b.wait_until(Duration::from_secs(10), "a token revoked", |b| {
        b.text_now("table.tokens tbody").contains("revoked")
    });
    let _ = first;

    // Peer detail, access, server and audit pages render for real.
    let c0 = b.find("#live tr[data-host=\"c0\"] a.host");
    assert!(
        c0.is_none(),
        "rows are found by data-host only on the peers page"
    );
    b.goto(&format!("{base}/console/peers"));
    b.click("#live tr[data-host=\"c0\"] a.host");
    b.wait_until(Duration::from_secs(10), "c0's own page", |b| {
        b.url().contains("/console/peers/")
    });
    b.wait_until(Duration::from_secs(20), "c0's paths reported", |b| {
        b.find("table.paths").is_some()
    });
    b.screenshot(&shots.join("peer.png"));
    for (page, file) in [
        ("access", "access.png"),
        ("server", "server.png"),
        ("audit", "audit.png"),
    ] {
        b.goto(&format!("{base}/console/{page}"));
        b.screenshot(&shots.join(file));
    }
    let audit = b.text("table.audit");
    for what in [
        "token_create",
        "token_revoke",
        "console_login",
        "registration",
    ] {
        assert!(audit.contains(what), "audit page lacks {what}: {audit}");
    }
    assert!(audit.contains("console:admin"));

    // A cross-site form post: a page on another origin (served here, on the root side of
    // the lab) submits a form to the console. SameSite=Strict keeps the session cookie off
    // it, and the Origin and CSRF checks would refuse it anyway.
    let count_tokens = || {
        common::netns::must(&[
            wgmesh_bin(),
            "token",
            "list",
            "--json",
            "--server",
            &base,
            "--admin-secret-file",
            &secret_file,
        ])
        .matches("tok-")
        .count()
    };
    let before = count_tokens();
    let evil = serve_once(
        &format!("{net}.254:0"),
        &format!(
            "<!doctype html><html><body><form id=f method=post action='{base}/console/tokens'>\
             <input name=tags value=tag:evil><input name=uses value=9></form>\
             <script>document.getElementById('f').submit()</script></body></html>"
        ),
    );
    b.goto(&evil);
    b.wait_until(Duration::from_secs(10), "the forged form posted", |b| {
        b.url().starts_with(&base)
    });
    assert_eq!(before, count_tokens(), "a cross-site post made a token");
    b.goto(&format!("{base}/console/peers"));
    assert!(
        b.url().ends_with("/console/peers"),
        "the real session still works"
    );
    // A hostile agent report renders as text. c0 stops first, so its own reports stop too.
    lab.signal(agents[0], "TERM");
    b.wait_until(Duration::from_secs(15), "c0 offline on the page", |b| {
        row_text(b, "c0").contains("offline")
    });
    // At most 64 characters: the server's limit on a report's version.
    let hostile = "<img src=x onerror=window.wgmeshOwned=1><b>b</b>";
    post_report(&base, &nodes[0].config, hostile);
    b.goto(&format!("{base}/console/peers"));
    b.click("#live tr[data-host=\"c0\"] a.host");
    b.wait_until(Duration::from_secs(10), "c0's page", |b| {
        b.url().contains("/console/peers/peer-")
    });
    assert!(
        b.text("dl.facts").contains(hostile),
        "{}",
        b.text("dl.facts")
    );
    assert_eq!(
        b.count("main img"),
        0,
        "markup from a report became an element"
    );
    assert_eq!(b.run("return window.wgmeshOwned === undefined;"), true);

    // The auditor: no buttons, and a post with the page's own CSRF token is refused.
    b.click("header form button[type=submit]");
    b.wait_until(Duration::from_secs(10), "logged out", |b| {
        b.url().ends_with("/console/login")
    });
    let auditor = std::fs::read_to_string(lab.dir.path().join("auditor.secret")).unwrap();
    b.fill("#secret", auditor.trim());
    b.click("button[type=submit]");
    b.wait_until(Duration::from_secs(10), "the auditor's peers page", |b| {
        b.url().ends_with("/console/peers")
    });
    b.goto(&format!("{base}/console/tokens"));
    assert_eq!(
        b.count("form.create"),
        0,
        "the auditor is offered token creation"
    );
    assert_eq!(
        b.count("table.tokens button"),
        0,
        "the auditor is offered revocation"
    );
    let before = count_tokens();
    let status = b.run_async(
        "const done = arguments[0];
         const csrf = document.querySelector('input[name=csrf]').value;
         fetch('/console/tokens', {method: 'POST', credentials: 'same-origin',
           body: new URLSearchParams({csrf, tags: 'tag:evil', uses: '1'})})
           .then(r => done(r.status), e => done(String(e)));",
    );
    assert_eq!(status, 403, "the auditor's post was not refused");
    assert_eq!(before, count_tokens());
    b.goto(&format!("{base}/console/peers"));
    b.screenshot(&shots.join("auditor.png"));
    drop(b);
    let _ = agents;
}

/// Posts a signed `POST /report` for the node whose config is at `config`, with `version`.
fn post_report(base: &str, config: &str, version: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    let private =
        wgmesh::keys::PrivateKey::from_base64(config["private_key"].as_str().unwrap()).unwrap();
    let peer_id = config["assignment"]["peer_id"].as_str().unwrap();
    let agent = common::agent();
    let key: serde_json::Value = agent
        .get(format!("{base}/key"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let server_key =
        wgmesh::keys::PublicKey::from_base64(key["server_public_key"].as_str().unwrap()).unwrap();
    let body = serde_json::json!({"peer_id": peer_id, "version": version, "paths": []}).to_string();
    let mut req = agent
        .post(format!("{base}/report"))
        .header("Content-Type", "application/json");
    for (name, value) in wgmesh::proto::auth::sign_request(
        &private,
        &server_key,
        "POST",
        "/report",
        body.as_bytes(),
        std::time::SystemTime::now(),
    ) {
        req = req.header(name, value);
    }
    let answer = req.send(body.as_str()).unwrap();
    assert_eq!(answer.status().as_u16(), 200);
}

/// Serves `html` once at `bind` (port 0: any), for a page from another origin; returns its
/// URL.
fn serve_once(bind: &str, html: &str) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(bind).expect("bind the other origin");
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let body = html.to_owned();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
fn an_admin_approves_and_rejects_a_subnet_route_on_the_peer_page() {
    let dir = TempDir::new("console-routes");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let key = new_key();
    let gw = post(
        &server,
        "/register",
        &serde_json::json!({"public_key": key, "hostname": "gw", "os": "linux",
            "listen_port": 51820, "allowed_ips": ["198.18.10.0/24"]})
        .to_string(),
    );
    let id = gw.json["peer_id"].as_str().unwrap().to_owned();
    let mut c = Client::new(&server);
    c.login(&server.admin_secret());
    let page = c.get(&format!("/console/peers/{id}"));
    assert!(page.body.contains("Subnet routes"), "{}", page.body);
    assert!(page.body.contains("198.18.10.0/24"), "{}", page.body);
    assert!(page
        .body
        .contains(&format!("/console/peers/{id}/routes/approve")));
    let csrf = c.csrf();
    let origin = c.origin();
    let path = format!("/console/peers/{id}/routes/approve");
    let forged = c.post(
        &path,
        &[("csrf", &csrf), ("prefix", "198.18.10.0/24")],
        Some("http://evil.example"),
    );
    assert_eq!(forged.status, 403);
    let done = c.post(
        &path,
        &[("csrf", &csrf), ("prefix", "198.18.10.0/24")],
        Some(&origin),
    );
    assert_eq!(done.status, 303, "{}", done.body);
    let listed = common::admin(&server, "GET", "/admin/routes", None);
    assert_eq!(
        listed.json["routes"][0]["approved"], true,
        "{}",
        listed.json
    );
    let page = c.get(&format!("/console/peers/{id}"));
    assert!(page.body.contains("primary"), "{}", page.body);
    let reject = format!("/console/peers/{id}/routes/reject");
    let done = c.post(
        &reject,
        &[("csrf", &csrf), ("prefix", "198.18.10.0/24")],
        Some(&origin),
    );
    assert_eq!(done.status, 303, "{}", done.body);
    let listed = common::admin(&server, "GET", "/admin/routes", None);
    assert_eq!(listed.json["routes"][0]["approved"], false);
    // The auditor sees the routes but cannot decide.
    let mut auditor = Client::new(&server);
    auditor.login(&auditor_secret(&server));
    let page = auditor.get(&format!("/console/peers/{id}"));
    assert!(page.body.contains("198.18.10.0/24"));
    assert!(!page.body.contains("/routes/approve"));
    let csrf = auditor.csrf();
    let refused = auditor.post(
        &path,
        &[("csrf", &csrf), ("prefix", "198.18.10.0/24")],
        Some(&origin),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    let audit = std::fs::read_to_string(server.dir().join("audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"route_approve\"") && l.contains("\"console:admin\"")),
        "{audit}"
    );
}

#[test]
fn an_admin_adds_and_removes_a_device_in_the_console_and_the_auditor_cannot() {
    let dir = TempDir::new("console-devices");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let gw = new_key();
    let body = serde_json::json!({"public_key": gw, "hostname": "gw", "os": "linux",
        "listen_port": 51820, "gateway_port": 51821});
    assert_eq!(post(&server, "/register", &body.to_string()).status, 200);
    let mut admin = Client::new(&server);
    assert_eq!(admin.login(&server.admin_secret()).status, 303);
    let page = admin.get("/console/devices");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Add device") && page.body.contains("<option value=\"gw\""));
    let (csrf, origin) = (admin.csrf(), admin.origin());
    let bad = admin.post(
        "/console/devices",
        &[("csrf", &csrf), ("name", "Bad_Name"), ("via", "gw")],
        Some(&origin),
    );
    assert_eq!(bad.status, 200);
    assert!(bad.body.contains("field `name`"), "{}", bad.body);
    let added = admin.post(
        "/console/devices",
        &[
            ("csrf", &csrf),
            ("name", "phone"),
            ("via", "gw"),
            ("tags", "tag:phone"),
        ],
        Some(&origin),
    );
    assert_eq!(added.status, 200, "{}", added.body);
    assert!(added.body.contains("Device phone added"), "{}", added.body);
    assert!(added.body.contains("shown this once") && added.body.contains("<svg"));
    assert_eq!(
        added.headers.get("cache-control").map(String::as_str),
        Some("no-store")
    );
    let marker = "PrivateKey = ";
    let start = added.body.find(marker).expect("the configuration") + marker.len();
    let private = added.body[start..].split('\n').next().unwrap().to_owned();
    assert!(
        wgmesh::keys::PrivateKey::from_base64(&private).is_ok(),
        "{private}"
    );
    // Shown once: the page afterwards lists the device, never its key.
    let listed = admin.get("/console/devices");
    assert!(listed.body.contains("phone.mesh") && !listed.body.contains(&private));
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(
        audit.contains("device_add") && audit.contains("console:admin"),
        "{audit}"
    );
    assert!(!audit.contains(&private));

    let mut auditor = Client::new(&server);
    assert_eq!(auditor.login(&auditor_secret(&server)).status, 303);
    let seen = auditor.get("/console/devices");
    assert!(seen.body.contains("phone.mesh") && !seen.body.contains("Add device"));
    let auditor_csrf = auditor.csrf();
    let refused = auditor.post(
        "/console/devices/phone/remove",
        &[("csrf", &auditor_csrf)],
        Some(&origin),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    // Without the CSRF token, nothing either.
    let forged = admin.post("/console/devices/phone/remove", &[], Some(&origin));
    assert_eq!(forged.status, 403, "{}", forged.body);
    let removed = admin.post(
        "/console/devices/phone/remove",
        &[("csrf", &csrf)],
        Some(&origin),
    );
    assert_eq!(removed.status, 303, "{}", removed.body);
    let devices = common::admin(&server, "GET", "/admin/devices", None);
    assert_eq!(devices.json["devices"].as_array().unwrap().len(), 0);
}
