//! A real browser for console tests: Debian's `chromium` driven through `chromedriver` over
//! W3C WebDriver (plain HTTP and JSON, so a small synchronous client on `ureq` does it).
//! Headless, with a fresh profile and Chromium's background networking off (this machine
//! has no network beyond the test's own addresses). Fails, never skips, when either binary
//! is missing: CI installs both.

use super::TempDir;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The key W3C WebDriver names element references by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session, closed (and chromedriver stopped) on drop.
pub struct Browser {
    driver: Child,
    base: String,
    agent: ureq::Agent,
    _profile: TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless Chromium session.
    pub fn start() -> Browser {
        for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: install Debian's chromium and chromium-driver (CI does)"
            );
        }
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        let profile = TempDir::new("chromium");
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            agent,
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while browser.call("GET", "/status", None).is_err() {
            assert!(Instant::now() < deadline, "chromedriver never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = format!("--user-data-dir={}", browser._profile.path().display());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1400,1000", profile]
            }
        }}});
        let session = browser
            .call("POST", "/session", Some(caps))
            .expect("a browser session");
        let id = session["sessionId"]
            .as_str()
            .expect("the session has an id")
            .to_owned();
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    /// One WebDriver command; the `value` of its answer, or the error it reported.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let answer = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .send_json(body.unwrap_or_else(|| json!({}))),
        };
        let mut answer = answer.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = answer.status().as_u16();
        let value: Value = answer
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_json()
            .map_err(|e| format!("{method} {path}: {e}"))?;
        match status {
            200 => Ok(value["value"].clone()),
            _ => Err(format!("{method} {path}: {status} {}", value["value"])),
        }
    }

    fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, path, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(json!({ "url": url })));
    }

    /// Deletes every cookie of the page open now (e.g. to log out of a site).
    pub fn delete_cookies(&self) {
        self.must("DELETE", "/cookie", None);
    }

    /// The address the browser shows now.
    pub fn url(&self) -> String {
        self.must("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The first element matching `css`, if any.
    pub fn find(&self, css: &str) -> Option<String> {
        self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )
        .ok()
        .and_then(|v| v[ELEMENT].as_str().map(str::to_owned))
    }

    /// How many elements match `css`.
    pub fn count(&self, css: &str) -> usize {
        self.must(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .as_array()
        .map_or(0, Vec::len)
    }

    /// Runs `op` on the element matching `css`, looking it up afresh when it is not there
    /// yet or when the page's live part was swapped under it (a stale reference), for up to
    /// ten seconds: the console re-renders its live part whenever the mesh changes.
    fn on_element<T>(&self, css: &str, op: impl Fn(&str) -> Result<T, String>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let outcome = match self.find(css) {
                Some(e) => op(&e),
                None => Err(format!("no element matches {css:?} on {}", self.url())),
            };
            match outcome {
                Ok(value) => return value,
                Err(e) if Instant::now() < deadline && retryable(&e) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Clicks the element matching `css`.
    pub fn click(&self, css: &str) {
        self.on_element(css, |e| {
            self.call("POST", &format!("/element/{e}/click"), None)
        });
    }

    /// Types `text` into the element matching `css` (after clearing it).
    pub fn fill(&self, css: &str, text: &str) {
        self.on_element(css, |e| {
            self.call("POST", &format!("/element/{e}/clear"), None)?;
            self.call(
                "POST",
                &format!("/element/{e}/value"),
                Some(json!({ "text": text })),
            )
        });
    }

    /// The visible text of the element matching `css` (waiting up to ten seconds for it).
    pub fn text(&self, css: &str) -> String {
        self.on_element(css, |e| {
            self.call("GET", &format!("/element/{e}/text"), None)
                .map(|v| v.as_str().unwrap_or_default().to_owned())
        })
    }

    /// The visible text of the first element matching `css`, or "" when there is none yet
    /// (read in one go, so a page being replaced cannot fail it halfway).
    pub fn text_now(&self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.innerText : '';",
            serde_json::Value::from(css)
        );
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
    }

    /// Runs `script` in the page (its `return` value comes back).
    pub fn run(&self, script: &str) -> Value {
        self.must(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Runs an async `script` in the page; it calls `arguments[0](value)` when done.
    pub fn run_async(&self, script: &str) -> Value {
        self.must(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Saves a PNG of the page to `path`.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let data = self.must("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .expect("the screenshot is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    /// Waits up to `limit` until `check` holds, polling every 200 ms.
    pub fn wait_until(&self, limit: Duration, what: &str, mut check: impl FnMut(&Browser) -> bool) {
        let deadline = Instant::now() + limit;
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting until {what} (at {})",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call("DELETE", "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Whether a failed element command is worth a fresh lookup: the element is not there yet,
/// or it was replaced after we found it.
fn retryable(error: &str) -> bool {
    error.contains("no element matches") || error.contains("stale element")
}
