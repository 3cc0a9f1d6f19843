//! `docs/openapi.json` against the real broker: every documented operation is called for its
//! success and its typical refusals, every answer must be documented for that operation and
//! match the documented schema, and every documented status must have been seen (apart from
//! the few listed in [`NOT_PROVOKED`], each with the reason).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use stellwerk_e2e::binary::workspace_root;
use stellwerk_e2e::plugin_dir::{component, PluginDir};
use stellwerk_e2e::{random_hex, Server};

/// The page origin the broker allows (`allowed_origins`).
const STUDIP: &str = "https://studip.example.org";

const COURSE: &str = "a07535cf2f8a72df33c12ddfa4b53dde";
const CHAT: &str = "course:a07535cf2f8a72df33c12ddfa4b53dde:chat";
const ADA: &str = "e7a0a84b161f3e8c09b4a0a2e8a58147";
/// Plugin uploads above this are refused on the main broker (413); the test plugins are
/// about 110 KiB.
const MAX_UPLOAD: usize = 512 * 1024;
/// Default `limits.max_publish_bytes`.
const MAX_PUBLISH: usize = 1024 * 1024;
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Documented answers no test can provoke, and why.
const NOT_PROVOKED: [(&str, &str, u16, &str); 9] = [
    (
        "/api/publish",
        "post",
        503,
        "only with the Redis engine while Redis is unreachable: tests/tests/cluster.rs",
    ),
    (
        "/api/channels",
        "get",
        503,
        "only with the Redis engine while Redis is unreachable",
    ),
    (
        "/api/channels/{channel}/presence",
        "get",
        503,
        "only with the Redis engine while Redis is unreachable",
    ),
    (
        "/api/channels/{channel}/history",
        "get",
        503,
        "only with the Redis engine while Redis is unreachable",
    ),
    (
        "/api/users/{user}/disconnect",
        "post",
        503,
        "only with the Redis engine while Redis is unreachable",
    ),
    (
        "/readyz",
        "get",
        503,
        "only while shutting down, when the listener no longer accepts connections",
    ),
    (
        "/admin/plugins/{name}/reload",
        "post",
        500,
        "an I/O error reading the plugin directory; not provokable as root",
    ),
    (
        "/admin/plugins/{name}",
        "put",
        500,
        "an I/O error writing the plugin directory; not provokable as root",
    ),
    (
        "/admin/plugins/{name}",
        "delete",
        500,
        "an I/O error deleting the plugin file; not provokable as root",
    ),
];

const METHODS: [&str; 6] = ["get", "post", "put", "delete", "patch", "options"];

fn load_document() -> Value {
    let path = workspace_root().join("docs").join("openapi.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// What a request carries besides its credentials.
enum Body {
    None,
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

/// The document, and what the server answered so far.
struct Contract {
    doc: Value,
    seen: BTreeSet<(String, String, u16)>,
    http: reqwest::Client,
}

impl Contract {
    fn new() -> Self {
        Self {
            doc: load_document(),
            seen: BTreeSet::new(),
            // A fresh connection per request: the broker closes a connection whose oversized
            // body it refused (413), and a pooled one could race with that close.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("an HTTP client"),
        }
    }

    /// `#/a/b` → the value there, failing the test when it does not resolve.
    fn pointer(&self, reference: &str) -> &Value {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("only local `$ref`s are used, not {reference}"));
        self.doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("`$ref` {reference} does not resolve"))
    }

    /// `value` with every local `$ref` replaced by what it points to, so that a schema can be
    /// compiled on its own.
    fn inline(&self, value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(reference)) = map.get("$ref") {
                    let target = self.inline(self.pointer(reference));
                    let siblings: serde_json::Map<String, Value> = map
                        .iter()
                        .filter(|(k, _)| *k != "$ref")
                        .map(|(k, v)| (k.clone(), self.inline(v)))
                        .collect();
                    if siblings.is_empty() {
                        return target;
                    }
                    let mut all = siblings;
                    all.insert("allOf".into(), json!([target]));
                    return Value::Object(all);
                }
                Value::Object(
                    map.iter()
                        .map(|(k, v)| (k.clone(), self.inline(v)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(|v| self.inline(v)).collect()),
            other => other.clone(),
        }
    }

    fn operation(&self, template: &str, method: &str) -> &Value {
        let op = &self.doc["paths"][template][method];
        assert!(
            op.is_object(),
            "{} {template} is not in docs/openapi.json",
            method.to_uppercase()
        );
        op
    }

    /// Every (path, method, status) the document promises.
    fn documented(&self) -> BTreeSet<(String, String, u16)> {
        let mut all = BTreeSet::new();
        let paths = self.doc["paths"].as_object().expect("`paths` is an object");
        for (path, item) in paths {
            for method in METHODS {
                let Some(responses) = item[method]["responses"].as_object() else {
                    continue;
                };
                for status in responses.keys() {
                    let status: u16 = status
                        .parse()
                        .unwrap_or_else(|_| panic!("{method} {path}: status `{status}` is not a number (no `default` please: every answer is documented)"));
                    all.insert((path.clone(), method.to_owned(), status));
                }
            }
        }
        all
    }

    /// Checks `value` against `schema` (refs inlined), failing the test with every violation.
    fn validate(&self, schema: &Value, value: &Value, what: &str) {
        let schema = self.inline(schema);
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&schema)
            .unwrap_or_else(|e| panic!("{what}: the schema does not compile: {e}\n{schema:#}"));
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{} at `{}`", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: does not match docs/openapi.json:\n  {}\nbody: {value}",
            errors.join("\n  ")
        );
    }

    /// Every header the response documents as `required` is there and fits its schema
    /// (integers parsed as such).
    fn check_headers(&self, response: &Value, headers: &reqwest::header::HeaderMap, what: &str) {
        let Some(documented) = response["headers"].as_object() else {
            return;
        };
        for (name, header) in documented {
            let value = headers.get(name.as_str()).and_then(|v| v.to_str().ok());
            let Some(value) = value else {
                assert!(
                    header["required"] != true,
                    "{what}: the documented header {name} is missing"
                );
                continue;
            };
            let value = if header["schema"]["type"] == "integer" {
                value
                    .parse::<i64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| panic!("{what}: {name}: {value} is not an integer"))
            } else {
                Value::from(value)
            };
            self.validate(&header["schema"], &value, &format!("{what} header {name}"));
        }
    }

    /// Sends the request, checks the answer against the document and returns status and body
    /// (JSON, or a JSON string for text).
    async fn call(
        &mut self,
        server: &Server,
        method: &str,
        template: &str,
        path: &str,
        bearer: Option<&str>,
        body: Body,
    ) -> (u16, Value) {
        self.call_with(server, method, template, path, &[], bearer, body)
            .await
    }

    /// [`Self::call`] with extra request headers (`Origin`).
    #[allow(clippy::too_many_arguments)]
    async fn call_with(
        &mut self,
        server: &Server,
        method: &str,
        template: &str,
        path: &str,
        headers: &[(&str, &str)],
        bearer: Option<&str>,
        body: Body,
    ) -> (u16, Value) {
        assert_matches_template(template, path);
        let what = format!("{} {path}", method.to_uppercase());
        let verb = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
        let mut req = self.http.request(verb, server.http_url(path));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        let sent_json = match body {
            Body::None => None,
            Body::Json(value) => {
                req = req.body(value.to_string());
                Some(value)
            }
            Body::Raw(content_type, bytes) => {
                req = req.header("Content-Type", content_type).body(bytes);
                None
            }
        };
        let resp = tokio::time::timeout(HTTP_TIMEOUT, req.send())
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {HTTP_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        self.check(method, template, &what, resp, sent_json).await
    }

    /// Opens `/ws` (with the upgrade headers) or `/sse`: an upgrade or a stream is checked
    /// against the document without reading it (it never ends), a refusal like any answer.
    async fn open(&mut self, server: &Server, template: &str, path: &str) -> (u16, Value) {
        self.open_with(server, template, path, &[]).await
    }

    /// [`Self::open`] with extra request headers (`Origin`).
    async fn open_with(
        &mut self,
        server: &Server,
        template: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        assert_matches_template(template, path);
        let what = format!("GET {path} with {headers:?}");
        let mut req = self.http.get(server.http_url(path));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if template == "/ws" {
            req = req
                .header("Connection", "Upgrade")
                .header("Upgrade", "websocket")
                .header("Sec-WebSocket-Version", "13")
                .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
        } else {
            req = req.header("Accept", "text/event-stream");
        }
        let resp = tokio::time::timeout(HTTP_TIMEOUT, req.send())
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {HTTP_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = resp.status().as_u16();
        if !(status == 101 || (200..300).contains(&status)) {
            return self.check("get", template, &what, resp, None).await;
        }
        let op = self.operation(template, "get").clone();
        let Some(response) = op["responses"].get(status.to_string()) else {
            panic!("{what} answered {status}, which docs/openapi.json does not document");
        };
        let content_type = header(&resp, "content-type");
        match self.inline(response)["content"].as_object() {
            Some(content) => {
                let media = content.keys().next().expect("one media type");
                assert!(
                    content_type.starts_with(media.as_str()),
                    "{what} {status}: Content-Type `{content_type}`, documented `{media}`"
                );
            }
            None => assert_eq!(status, 101, "{what}: only an upgrade has no content"),
        }
        self.seen
            .insert((template.to_owned(), "get".to_owned(), status));
        (status, Value::Null)
    }

    /// Checks an answer against the document and returns status and body (JSON, or a JSON
    /// string for text).
    async fn check(
        &mut self,
        method: &str,
        template: &str,
        what: &str,
        resp: reqwest::Response,
        sent_json: Option<Value>,
    ) -> (u16, Value) {
        let status = resp.status().as_u16();
        let content_type = header(&resp, "content-type");
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();

        let op = self.operation(template, method).clone();
        let Some(response) = op["responses"].get(status.to_string()) else {
            panic!(
                "{what} answered {status}, which docs/openapi.json does not document for \
                 {} {template}; body: {text}",
                method.to_uppercase()
            );
        };
        if status == 204 {
            assert!(
                response.get("content").is_none() && text.is_empty(),
                "{what} {status}: no content, documented and sent"
            );
            self.seen
                .insert((template.to_owned(), method.to_owned(), status));
            return (status, Value::Null);
        }
        let response = self.inline(response);
        self.check_headers(&response, &headers, &format!("{what} {status}"));
        let content = response["content"]
            .as_object()
            .unwrap_or_else(|| panic!("{what} {status}: no `content` documented"));
        assert_eq!(
            content.len(),
            1,
            "{what} {status}: one media type per answer"
        );
        let (media, media_object) = content.iter().next().expect("one media type");
        assert!(
            content_type.starts_with(media.as_str()),
            "{what} {status}: Content-Type `{content_type}`, documented `{media}`"
        );
        let body = if media == "application/json" {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{what} {status}: body is not JSON ({e}): {text}"))
        } else {
            Value::String(text)
        };
        self.validate(
            &media_object["schema"],
            &body,
            &format!("{what} → {status}"),
        );
        if (200..300).contains(&status) {
            if let Some(sent) = sent_json {
                let schema = &op["requestBody"]["content"]["application/json"]["schema"];
                assert!(
                    schema.is_object(),
                    "{what}: a JSON request body is accepted but not documented"
                );
                self.validate(schema, &sent, &format!("{what} request body"));
            }
        }
        self.seen
            .insert((template.to_owned(), method.to_owned(), status));
        (status, body)
    }
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// `/api/channels/public:x/presence?a=1` fits `/api/channels/{channel}/presence`.
#[track_caller]
fn assert_matches_template(template: &str, path: &str) {
    let path = path.split('?').next().unwrap_or_default();
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    let fits = t.len() == p.len()
        && t.iter().zip(&p).all(|(t, p)| {
            if t.starts_with('{') && t.ends_with('}') {
                !p.is_empty()
            } else {
                t == p
            }
        });
    assert!(fits, "{path} is not an instance of {template}");
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn every_ref_resolves_and_every_protected_operation_documents_401() {
    let contract = Contract::new();
    assert_eq!(contract.doc["openapi"], "3.1.0");
    // Inlining the whole document resolves every `$ref` in it.
    let _ = contract.inline(&contract.doc);
    let schemes = contract.doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    for (name, scheme) in schemes {
        assert_eq!(scheme["type"], "http", "{name}");
        assert_eq!(scheme["scheme"], "bearer", "{name}");
    }
    for (path, item) in contract.doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            let op = &item[method];
            if !op.is_object() {
                continue;
            }
            let security = op["security"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path}: say `security` explicitly"));
            let wanted = if path.starts_with("/api/") {
                Some("apiKey")
            } else if path.starts_with("/admin/") || path == "/metrics" {
                Some("adminToken")
            } else {
                None
            };
            match wanted {
                Some(scheme) => {
                    assert_eq!(security, &vec![json!({ scheme: [] })], "{method} {path}");
                    assert!(
                        op["responses"]["401"].is_object(),
                        "{method} {path} needs a token but documents no 401"
                    );
                }
                None => assert!(security.is_empty(), "{method} {path} is open"),
            }
        }
    }
    for (path, method, status, _) in NOT_PROVOKED {
        assert!(
            contract
                .documented()
                .contains(&(path.into(), method.into(), status)),
            "NOT_PROVOKED lists {method} {path} {status}, which is not documented"
        );
    }
}

/// The `(path, method)` pairs the broker routes, read from `broker/src/server.rs`
/// (`.route("/path", get(…).post(…))`).
fn routed_operations() -> BTreeSet<(String, String)> {
    let path = workspace_root()
        .join("broker")
        .join("src")
        .join("server.rs");
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut routes = BTreeSet::new();
    for chunk in source.split(".route(").skip(1) {
        // The arguments end at the parenthesis that closes `.route(`.
        let mut depth = 1;
        let end = chunk
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map_or(chunk.len(), |(i, _)| i);
        let args = &chunk[..end];
        let Some(literal) = args.split('"').nth(1) else {
            continue;
        };
        for method in METHODS {
            let called = args.match_indices(&format!("{method}(")).any(|(i, _)| {
                i == 0 || !args[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
            });
            if called {
                routes.insert((literal.to_owned(), method.to_owned()));
            }
        }
    }
    routes
}

#[test]
fn every_routed_http_endpoint_is_documented_and_nothing_else() {
    let contract = Contract::new();
    let documented: BTreeSet<(String, String)> = contract
        .documented()
        .into_iter()
        .map(|(path, method, _)| (path, method))
        .collect();
    let routed = routed_operations();
    assert!(
        routed.contains(&("/api/publish".into(), "post".into())),
        "reading the routes of broker/src/server.rs failed: {routed:?}"
    );
    assert_eq!(
        routed, documented,
        "routes of broker/src/server.rs (left) vs operations of docs/openapi.json (right)"
    );
}

#[tokio::test]
async fn every_documented_answer_is_what_the_server_sends() {
    // A directory of its own: the admin API writes into it.
    let dir = PluginDir::with(&["public", "course", "user", "panicky", "spin"]);
    let empty = PluginDir::with(&[]);
    let admin = random_hex(16);
    let server = Server::builder()
        .plugins_dir(dir.path())
        .env("STELLWERK_ADMIN_TOKEN", &admin)
        .env("STELLWERK_PLUGINS_MAX_UPLOAD_BYTES", MAX_UPLOAD)
        .env("STELLWERK_ALLOWED_ORIGINS", STUDIP)
        .start()
        .await;
    // No plugins and no admin token: metrics and the admin API are off.
    let bare = Server::builder().plugins_dir(empty.path()).start().await;
    let key = server.api_key().to_owned();
    let key = Some(key.as_str());
    let admin = Some(admin.as_str());
    let mut c = Contract::new();

    // ----- health -----
    let (status, body) = c
        .call(&server, "get", "/healthz", "/healthz", None, Body::None)
        .await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, body) = c
        .call(&server, "get", "/readyz", "/readyz", None, Body::None)
        .await;
    assert_eq!((status, body), (200, json!({"status": "ready"})));

    // Someone online, so that channels and presence have something to show.
    let mut ada = server
        .ws_as(
            ADA,
            json!({"perm": "autor", "name": "Ada", "courses": { COURSE: "autor" }}),
        )
        .await;
    for channel in [CHAT, "public:news"] {
        let reply = ada
            .request(json!({"type": "subscribe", "channel": channel}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }

    // ----- every /api/* operation: 401 without a key, with a wrong one, with the admin token -----
    let protected = [
        ("post", "/api/publish", "/api/publish"),
        ("get", "/api/channels", "/api/channels"),
        (
            "get",
            "/api/channels/{channel}/presence",
            "/api/channels/public:news/presence",
        ),
        (
            "get",
            "/api/channels/{channel}/history",
            "/api/channels/public:news/history",
        ),
        (
            "post",
            "/api/users/{user}/disconnect",
            "/api/users/nobody/disconnect",
        ),
        ("get", "/api/info", "/api/info"),
    ];
    for (method, template, path) in protected {
        for bearer in [None, Some("wrong-key"), admin] {
            let body = if method == "post" && template == "/api/publish" {
                Body::Json(json!({"channel": "public:news", "data": 1}))
            } else {
                Body::None
            };
            let (status, _) = c.call(&server, method, template, path, bearer, body).await;
            assert_eq!(status, 401, "{method} {path} with {bearer:?}");
        }
    }

    // ----- POST /api/publish -----
    let publish = |data: Value| Body::Json(data);
    let (status, body) = c
        .call(
            &server,
            "post",
            "/api/publish",
            "/api/publish",
            key,
            publish(json!({"channel": "public:news", "data": {"n": 1}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = c
        .call(
            &server,
            "post",
            "/api/publish",
            "/api/publish",
            key,
            publish(json!({"channels": ["public:news", CHAT], "data": {"n": 2}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][1]["channel"], CHAT);
    for (bad, want) in [
        (Body::Raw("application/json", b"{not json".to_vec()), 400),
        (publish(json!({"data": 1})), 400),
        (publish(json!({"channel": "no colon", "data": 1})), 400),
        (publish(json!({"channel": "course:x", "data": 1})), 403),
        (publish(json!({"channel": "nobody:x", "data": 1})), 404),
        (publish(json!({"channel": "panicky:room", "data": 1})), 500),
        (
            publish(json!({"channel": "public:news", "data": "x".repeat(MAX_PUBLISH)})),
            413,
        ),
    ] {
        let (status, body) = c
            .call(&server, "post", "/api/publish", "/api/publish", key, bad)
            .await;
        assert_eq!(status, want, "{body}");
    }

    // ----- 429: a broker that allows one publish a second -----
    let limited = Server::builder()
        .env("STELLWERK_RATE_LIMITS_API_PUBLISHES_PER_SECOND", 1)
        .env("STELLWERK_RATE_LIMITS_API_PUBLISHES_BURST", 1)
        .start()
        .await;
    let limited_key = limited.api_key().to_owned();
    let mut statuses = Vec::new();
    // Bounded: at one token a second, ten requests in a row meet an empty bucket.
    for n in 0..10 {
        let (status, body) = c
            .call(
                &limited,
                "post",
                "/api/publish",
                "/api/publish",
                Some(&limited_key),
                publish(json!({"channel": "public:news", "data": {"n": n}})),
            )
            .await;
        statuses.push(status);
        if status == 429 {
            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
            break;
        }
    }
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    drop(limited);

    // ----- GET /api/channels -----
    let (status, body) = c
        .call(
            &server,
            "get",
            "/api/channels",
            "/api/channels",
            key,
            Body::None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"channels": [{"channel": CHAT, "subscribers": 1}, {"channel": "public:news", "subscribers": 1}]})
    );
    let (status, body) = c
        .call(
            &server,
            "get",
            "/api/channels",
            "/api/channels?prefix=public:",
            key,
            Body::None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"channels": [{"channel": "public:news", "subscribers": 1}]})
    );
    let (status, _) = c
        .call(
            &server,
            "get",
            "/api/channels",
            "/api/channels?prefix=a%20b",
            key,
            Body::None,
        )
        .await;
    assert_eq!(status, 400);

    // ----- GET /api/channels/{channel}/presence -----
    let template = "/api/channels/{channel}/presence";
    let (status, body) = c
        .call(
            &server,
            "get",
            template,
            &format!("/api/channels/{CHAT}/presence"),
            key,
            Body::None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"channel": CHAT, "members": [{"user": ADA, "info": {"name": "Ada"}}]})
    );
    for (path, want) in [
        ("/api/channels/public:news/presence", 400),
        ("/api/channels/no-colon/presence", 400),
        ("/api/channels/nobody:x/presence", 404),
    ] {
        let (status, body) = c
            .call(&server, "get", template, path, key, Body::None)
            .await;
        assert_eq!(status, want, "{path}: {body}");
    }

    // ----- GET /api/channels/{channel}/history -----
    let template = "/api/channels/{channel}/history";
    for (path, want) in [
        ("/api/channels/public:news/history", 200),
        ("/api/channels/public:news/history?limit=1&since=0", 200),
        ("/api/channels/public:news/history?limit=ten", 400),
        ("/api/channels/no-colon/history", 400),
        ("/api/channels/nobody:x/history", 404),
    ] {
        let (status, body) = c
            .call(&server, "get", template, path, key, Body::None)
            .await;
        assert_eq!(status, want, "{path}: {body}");
    }

    // ----- POST /api/users/{user}/disconnect -----
    let template = "/api/users/{user}/disconnect";
    let (status, body) = c
        .call(
            &server,
            "post",
            template,
            &format!("/api/users/{ADA}/disconnect"),
            key,
            Body::None,
        )
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"user": ADA, "disconnected": 1}))
    );
    let (code, _) = ada.expect_close().await;
    assert_eq!(code, 4003);
    let (status, _) = c
        .call(
            &server,
            "post",
            template,
            "/api/users/%20x/disconnect",
            key,
            Body::None,
        )
        .await;
    assert_eq!(status, 400);

    // ----- GET /api/info -----
    for broker in [&server, &bare] {
        let key = broker.api_key().to_owned();
        let (status, body) = c
            .call(
                broker,
                "get",
                "/api/info",
                "/api/info",
                Some(&key),
                Body::None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    // ----- GET /metrics -----
    let (status, body) = c
        .call(&server, "get", "/metrics", "/metrics", admin, Body::None)
        .await;
    assert_eq!(status, 200);
    assert!(
        body.as_str()
            .is_some_and(|text| text.contains("# TYPE stellwerk_connections gauge")),
        "{body}"
    );
    for bearer in [None, key] {
        let (status, _) = c
            .call(&server, "get", "/metrics", "/metrics", bearer, Body::None)
            .await;
        assert_eq!(status, 401);
    }
    let (status, _) = c
        .call(
            &bare,
            "get",
            "/metrics",
            "/metrics",
            Some("anything"),
            Body::None,
        )
        .await;
    assert_eq!(status, 404);

    // ----- the admin API -----
    check_admin_api(&mut c, &server, &bare, dir.path(), admin, key).await;

    // ----- GET /ws and GET /sse: the upgrade or stream, and the refusals before it -----
    check_streams(&mut c, &server).await;

    // ----- every documented answer was seen -----
    let not_provoked: BTreeSet<(String, String, u16)> = NOT_PROVOKED
        .iter()
        .map(|(path, method, status, _)| ((*path).to_owned(), (*method).to_owned(), *status))
        .collect();
    let missing: Vec<String> = c
        .documented()
        .difference(&c.seen)
        .filter(|op| !not_provoked.contains(op))
        .map(|(path, method, status)| format!("{} {path} → {status}", method.to_uppercase()))
        .collect();
    assert!(
        missing.is_empty(),
        "documented in docs/openapi.json but never answered in this test:\n  {}",
        missing.join("\n  ")
    );
}

async fn check_streams(c: &mut Contract, server: &Server) {
    let ada = server.mint(
        ADA,
        json!({"perm": "autor", "courses": { COURSE: "autor" }}),
        Duration::from_secs(3600),
    );
    let bob = server.token("bob");
    let studip = [("Origin", STUDIP)];
    let evil = [("Origin", "https://evil.example.net")];
    for (headers, want) in [(&[][..], 101), (&studip[..], 101), (&evil[..], 403)] {
        let (status, body) = c
            .open_with(server, "/ws", &format!("/ws?token={ada}"), headers)
            .await;
        assert_eq!(status, want, "/ws with {headers:?}: {body}");
    }
    for (path, headers, want) in [
        (
            format!("/sse?channel=public:news&token={ada}"),
            &[][..],
            200,
        ),
        (
            format!("/sse?channel=public:news&token={ada}"),
            &studip[..],
            200,
        ),
        (
            format!("/sse?channel=public:news&token={ada}"),
            &evil[..],
            403,
        ),
        (format!("/sse?token={ada}"), &studip[..], 400),
        ("/sse?channel=public:news".to_owned(), &studip[..], 401),
        (format!("/sse?channel={CHAT}&token={bob}"), &[][..], 403),
        (format!("/sse?channel=nobody:x&token={ada}"), &[][..], 404),
        (format!("/sse?channel=spin:x&token={ada}"), &[][..], 500),
    ] {
        let (status, body) = c.open_with(server, "/sse", &path, headers).await;
        assert_eq!(status, want, "{path} with {headers:?}: {body}");
    }
    for (headers, want) in [(&studip[..], 204), (&evil[..], 403)] {
        let (status, body) = c
            .call_with(
                server,
                "options",
                "/sse",
                "/sse?channel=public:news",
                headers,
                None,
                Body::None,
            )
            .await;
        assert_eq!(status, want, "OPTIONS /sse with {headers:?}: {body}");
    }

    // The connection caps: one stream per user, two on the node.
    let capped = Server::builder()
        .env("STELLWERK_LIMITS_MAX_CONNECTIONS", 2)
        .env("STELLWERK_LIMITS_MAX_CONNECTIONS_PER_USER", 1)
        .start()
        .await;
    let (ada, bob, carl) = (
        capped.token("ada"),
        capped.token("bob"),
        capped.token("carl"),
    );
    let _ada_stream = capped
        .sse(&format!("/sse?channel=public:x&token={ada}"))
        .await;
    let (status, _) = c
        .open(
            &capped,
            "/sse",
            &format!("/sse?channel=public:x&token={ada}"),
        )
        .await;
    assert_eq!(status, 429);
    let (status, _) = c.open(&capped, "/ws", &format!("/ws?token={ada}")).await;
    assert_eq!(status, 429);
    let _bob = capped.ws(&format!("/ws?token={bob}")).await;
    let (status, _) = c
        .open(
            &capped,
            "/sse",
            &format!("/sse?channel=public:x&token={carl}"),
        )
        .await;
    assert_eq!(status, 503);
    let (status, _) = c.open(&capped, "/ws", &format!("/ws?token={carl}")).await;
    assert_eq!(status, 503);
}

async fn check_admin_api(
    c: &mut Contract,
    server: &Server,
    bare: &Server,
    dir: &Path,
    admin: Option<&str>,
    api_key: Option<&str>,
) {
    // 401 (no token, or the API key) and 404 (admin off) for every operation.
    let ops = [
        ("get", "/admin/plugins", "/admin/plugins"),
        ("post", "/admin/plugins/reload", "/admin/plugins/reload"),
        (
            "post",
            "/admin/plugins/{name}/reload",
            "/admin/plugins/public/reload",
        ),
        ("put", "/admin/plugins/{name}", "/admin/plugins/public"),
        ("delete", "/admin/plugins/{name}", "/admin/plugins/public"),
    ];
    for (method, template, path) in ops {
        for bearer in [None, api_key] {
            let (status, _) = c
                .call(server, method, template, path, bearer, Body::None)
                .await;
            assert_eq!(status, 401, "{method} {path} with {bearer:?}");
        }
        let (status, _) = c
            .call(bare, method, template, path, Some("anything"), Body::None)
            .await;
        assert_eq!(status, 404, "{method} {path} without an admin token");
    }

    let (status, body) = c
        .call(
            server,
            "get",
            "/admin/plugins",
            "/admin/plugins",
            admin,
            Body::None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for name in ["course", "panicky", "public", "user"] {
        assert!(names.contains(&name), "{name} missing from {body}");
    }

    // A file that is no plugin: reloading it is refused, the others stay.
    std::fs::write(dir.join("broken.wasm"), b"not a component").expect("write broken.wasm");
    let template = "/admin/plugins/{name}/reload";
    for (path, want) in [
        ("/admin/plugins/public/reload", 200),
        ("/admin/plugins/broken/reload", 400),
        ("/admin/plugins/nosuch/reload", 404),
    ] {
        let (status, body) = c
            .call(server, "post", template, path, admin, Body::None)
            .await;
        assert_eq!(status, want, "{path}: {body}");
    }
    let (status, body) = c
        .call(
            server,
            "post",
            "/admin/plugins/reload",
            "/admin/plugins/reload",
            admin,
            Body::None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["results"]
            .as_array()
            .expect("results")
            .iter()
            .any(|r| r["name"] == "broken" && r["outcome"] == "refused"),
        "{body}"
    );

    // Deploy, redeploy the same bytes, refuse, remove.
    let template = "/admin/plugins/{name}";
    let wasm = read(&component("audiences"));
    for (bytes, path, want) in [
        (wasm.clone(), "/admin/plugins/audiences", 200),
        (wasm, "/admin/plugins/audiences", 200),
        (Vec::new(), "/admin/plugins/audiences", 400),
        (b"not a component".to_vec(), "/admin/plugins/junk", 400),
        (vec![0; MAX_UPLOAD + 1], "/admin/plugins/huge", 413),
    ] {
        let (status, body) = c
            .call(
                server,
                "put",
                template,
                path,
                admin,
                Body::Raw("application/wasm", bytes),
            )
            .await;
        assert_eq!(status, want, "PUT {path}: {body}");
    }
    for (path, want) in [
        ("/admin/plugins/audiences", 200),
        ("/admin/plugins/audiences", 404),
    ] {
        let (status, body) = c
            .call(server, "delete", template, path, admin, Body::None)
            .await;
        assert_eq!(status, want, "DELETE {path}: {body}");
    }
}
