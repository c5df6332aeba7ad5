//! A fake OpenRouter: the upstream the LLM gateway forwards to in tests. A TLS server (its own CA,
//! certificate for `openrouter.ai`, ALPN h2 + http/1.1, hyper-util auto) on 127.0.0.1:0 that
//! answers OpenRouter's API shapes, records every request it receives, and is scripted per test.
//!
//! | route | answer |
//! | --- | --- |
//! | `POST /api/v1/chat/completions` | [`ChatScript`]: JSON, or SSE when the body says `"stream": true`; billed per [`Cost`] ([`Cost::Billed`]: as a real OpenRouter could at the worst) |
//! | `POST /api/v1/embeddings` | [`EmbeddingsScript`] |
//! | `GET /api/v1/generation?id=X` | [`GenerationScript`]: 404 `misses` times per id, then the cost |
//! | `GET /api/v1/models` | the model list ([`default_models`]) |
//! | `GET /api/v1/workspaces/{id}` | [`WorkspaceScript`]; requires `Bearer` [`MANAGEMENT_KEY`] |
//!
//! Chat, embeddings and generation lookups require some `Authorization: Bearer` (401 without).
//! Anything else is 404 (so a path the gateway must answer itself shows up as a stray request).

mod bill;
mod respond;
mod script;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use script::{
    Billing, ChatScript, Cost, EmbeddingsScript, Gate, GenerationScript, MANAGEMENT_KEY,
    ProviderPrice, StreamEnd, WorkspaceScript, default_models, model_entry, pico_to_f64,
    usd_to_pico,
};

use crate::pki::Ca;

/// The chat completions path.
pub const CHAT: &str = "/api/v1/chat/completions";
/// The embeddings path.
pub const EMBEDDINGS: &str = "/api/v1/embeddings";
/// The generation lookup path (the id is in the query).
pub const GENERATION: &str = "/api/v1/generation";
/// The models list path.
pub const MODELS: &str = "/api/v1/models";
/// The workspaces path prefix (`/api/v1/workspaces/{id}`).
pub const WORKSPACES: &str = "/api/v1/workspaces/";

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// Every header, names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// The raw body.
    pub body: Bytes,
    /// The body as JSON, when it is JSON.
    pub json: Option<Value>,
    /// The generation id the fake answered with (chat and embeddings).
    pub generation_id: Option<String>,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive), in arrival order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The lowercased names of every header received.
    pub fn header_names(&self) -> Vec<&str> {
        self.headers.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// The JSON body (panics when the body was not JSON: the test expected JSON).
    pub fn body_json(&self) -> &Value {
        self.json
            .as_ref()
            .unwrap_or_else(|| panic!("{} {} had a non-JSON body", self.method, self.path))
    }
}

/// The life of one SSE response.
#[derive(Clone, Debug, Default)]
pub struct StreamRecord {
    /// The generation id of the response.
    pub id: String,
    /// Data events handed to the connection (keep-alive comments not counted).
    pub events_sent: usize,
    /// The last byte was sent (`[DONE]`, or the error event).
    pub finished: bool,
    /// The connection was aborted on purpose ([`StreamEnd::Cut`]).
    pub cut: bool,
    /// The peer (the gateway) went away before the end.
    pub client_gone: bool,
}

/// A generation the fake served (what a lookup of its id reports).
#[derive(Clone, Debug)]
pub struct Generation {
    /// Its id.
    pub id: String,
    /// The model that served it.
    pub model: String,
    /// The provider.
    pub provider: String,
    /// What it cost, in USD.
    pub cost: f64,
    /// What it cost, in pico-USD (exact for [`Cost::PerMaxToken`] and [`Cost::Billed`]).
    pub billed_pico: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

#[derive(Default)]
struct Script {
    chat: ChatScript,
    chat_queue: VecDeque<ChatScript>,
    embeddings: EmbeddingsScript,
    generation: GenerationScript,
    models: Option<Vec<Value>>,
    workspace: WorkspaceScript,
}

/// Everything shared between the server tasks and the test.
#[derive(Default)]
struct State {
    script: Mutex<Script>,
    requests: Mutex<Vec<Recorded>>,
    streams: Mutex<Vec<StreamRecord>>,
    generations: Mutex<HashMap<String, Generation>>,
    lookups: Mutex<HashMap<String, u32>>,
    next_id: AtomicU64,
    connections: AtomicUsize,
    /// Signalled to drop every open connection (accepting goes on).
    close_all: tokio::sync::Notify,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl State {
    fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::SeqCst);
        format!("gen-{n}-{:x}", std::process::id())
    }

    fn update_stream(&self, id: &str, f: impl FnOnce(&mut StreamRecord)) {
        let mut streams = self.streams.lock().unwrap();
        if let Some(s) = streams.iter_mut().find(|s| s.id == id) {
            f(s);
        }
    }
}

/// The running fake; stops (dropping its connections) on drop.
pub struct FakeOpenRouter {
    addr: SocketAddr,
    ca: Ca,
    state: Arc<State>,
    token: CancellationToken,
}

impl FakeOpenRouter {
    /// Starts the fake on 127.0.0.1:0 with a fresh CA and the default scripts.
    pub async fn start() -> Result<FakeOpenRouter> {
        FakeOpenRouter::start_on(TcpListener::bind("127.0.0.1:0").await?)
    }

    /// Starts the fake on `listener` (e.g. one bound inside a network namespace).
    pub fn start_on(listener: TcpListener) -> Result<FakeOpenRouter> {
        let ca = Ca::new()?;
        let config = ca.server_config(&["openrouter.ai"])?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let token = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(config),
            state.clone(),
            token.clone(),
        ));
        Ok(FakeOpenRouter {
            addr,
            ca,
            state,
            token,
        })
    }

    /// The bound address (127.0.0.1:port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `https://openrouter.ai:<port>`: the gateway's `upstream` (with a pin to 127.0.0.1).
    pub fn upstream_url(&self) -> String {
        format!("https://openrouter.ai:{}", self.port())
    }

    /// The fake's CA (to build clients that talk to it directly).
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The fake's CA certificate file: the gateway's `extra_ca_file`, curl's `--cacert`.
    pub fn ca_pem_path(&self) -> &Path {
        self.ca.pem_path()
    }

    // --- scripting ---

    /// Sets how every later chat request is answered (after any queued one-shot scripts).
    pub fn set_chat(&self, script: ChatScript) {
        self.state.script.lock().unwrap().chat = script;
    }

    /// Queues a script for the next chat request only.
    pub fn push_chat(&self, script: ChatScript) {
        self.state
            .script
            .lock()
            .unwrap()
            .chat_queue
            .push_back(script);
    }

    /// Sets how embeddings are answered.
    pub fn set_embeddings(&self, script: EmbeddingsScript) {
        self.state.script.lock().unwrap().embeddings = script;
    }

    /// Sets how generation lookups are answered.
    pub fn set_generation(&self, script: GenerationScript) {
        self.state.script.lock().unwrap().generation = script;
    }

    /// Replaces the model list.
    pub fn set_models(&self, models: Vec<Value>) {
        self.state.script.lock().unwrap().models = Some(models);
    }

    /// Sets the workspace's privacy flags (or makes it fail with 500).
    pub fn set_workspace(&self, script: WorkspaceScript) {
        self.state.script.lock().unwrap().workspace = script;
    }

    // --- observations ---

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The requests for `path` (without query), in arrival order.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until at least `n` requests for `path` arrived; returns them.
    pub async fn wait_for_requests(
        &self,
        path: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Recorded>> {
        crate::eventually(timeout, &format!("{n} requests to {path}"), || async {
            let got = self.requests_to(path);
            (got.len() >= n).then_some(got)
        })
        .await
    }

    /// Every SSE response so far.
    pub fn streams(&self) -> Vec<StreamRecord> {
        self.state.streams.lock().unwrap().clone()
    }

    /// The SSE response with generation id `id`.
    pub fn stream(&self, id: &str) -> Option<StreamRecord> {
        self.streams().into_iter().find(|s| s.id == id)
    }

    /// The generation `id` (served by the fake).
    pub fn generation(&self, id: &str) -> Option<Generation> {
        self.state.generations.lock().unwrap().get(id).cloned()
    }

    /// How many times `id` was looked up.
    pub fn lookups(&self, id: &str) -> u32 {
        self.state
            .lookups
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// TLS connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The most chat/embeddings requests that were being answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Drops every open connection, as a server closing idle keep-alives does, and keeps
    /// accepting new ones.
    pub fn close_connections(&self) {
        self.state.close_all.notify_waiters();
    }

    /// Stops accepting and drops all connections.
    pub fn shutdown(&self) {
        self.token.cancel();
    }
}

impl Drop for FakeOpenRouter {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    token: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = token.cancelled() => {
                conns.abort_all();
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    conns.spawn(respond::serve(tcp, acceptor.clone(), state.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            () = state.close_all.notified() => conns.abort_all(),
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Counts a chat/embeddings request in flight for as long as it lives.
struct InFlight(Arc<State>);

impl InFlight {
    fn enter(state: &Arc<State>) -> InFlight {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Seconds since the Unix epoch, for `created`.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
