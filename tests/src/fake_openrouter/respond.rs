//! The fake's HTTP side: one TLS connection served with hyper-util's auto builder, each request
//! recorded and then answered by the script for its route.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use super::bill;
use super::script::{ChatScript, Cost, MANAGEMENT_KEY, StreamEnd, pico_to_f64};
use super::{
    CHAT, EMBEDDINGS, GENERATION, Generation, InFlight, MODELS, Recorded, State, StreamRecord,
    WORKSPACES, default_models, unix_now,
};

type Body = BoxBody<Bytes, io::Error>;

/// The largest request body the fake reads (the gateway's own limit is what tests exercise).
const MAX_BODY: usize = 64 * 1024 * 1024;

pub(super) async fn serve(tcp: tokio::net::TcpStream, acceptor: TlsAcceptor, state: Arc<State>) {
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    state.connections.fetch_add(1, Ordering::SeqCst);
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(req, state).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), svc)
        .await;
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::BAD_REQUEST, "unreadable body"),
    };
    let mut rec = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        version: format!("{:?}", parts.version),
        json: serde_json::from_slice(&body).ok(),
        body,
        generation_id: None,
    };
    let bearer = rec
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_owned);
    let method = rec.method.clone();
    let path = rec.path.clone();
    let needs_key = [CHAT, EMBEDDINGS, GENERATION].contains(&path.as_str());
    let response = if needs_key && bearer.as_deref().is_none_or(str::is_empty) {
        error(StatusCode::UNAUTHORIZED, "No auth credentials found")
    } else {
        match (method.as_str(), path.as_str()) {
            ("POST", CHAT) => {
                let id = state.new_id();
                rec.generation_id = Some(id.clone());
                let (json, len) = (rec.json.clone(), rec.body.len());
                record(&state, rec);
                return chat(&state, id, json, len).await;
            }
            ("POST", EMBEDDINGS) => {
                let id = state.new_id();
                rec.generation_id = Some(id.clone());
                let json = rec.json.clone();
                record(&state, rec);
                return embeddings(&state, id, json);
            }
            ("GET", GENERATION) => generation(&state, rec.query.as_deref()),
            ("GET", MODELS) => {
                let models = state.script.lock().unwrap().models.clone();
                json_response(
                    StatusCode::OK,
                    &json!({ "data": models.unwrap_or_else(default_models) }),
                )
            }
            ("GET", p) if p.starts_with(WORKSPACES) => {
                let id = p[WORKSPACES.len()..].to_owned();
                record(&state, rec);
                // Held reads are recorded first, so a test can see one is in flight.
                while state.script.lock().unwrap().workspace.hold {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                return workspace(&state, &id, bearer.as_deref());
            }
            _ => error(StatusCode::NOT_FOUND, "Not Found"),
        }
    };
    record(&state, rec);
    response
}

fn record(state: &State, rec: Recorded) {
    state.requests.lock().unwrap().push(rec);
}

/// `model`, else the first of `models`, else `unknown`.
fn requested_model(body: Option<&Value>) -> String {
    let body = body.cloned().unwrap_or(Value::Null);
    body["model"]
        .as_str()
        .or_else(|| body["models"][0].as_str())
        .unwrap_or("unknown")
        .to_string()
}

async fn chat(
    state: &Arc<State>,
    id: String,
    body: Option<Value>,
    body_len: usize,
) -> Response<Body> {
    let script = {
        let mut s = state.script.lock().unwrap();
        s.chat_queue.pop_front().unwrap_or_else(|| s.chat.clone())
    };
    let in_flight = InFlight::enter(state);
    if !script.response_delay.is_zero() {
        tokio::time::sleep(script.response_delay).await;
    }
    if script.status != 200 {
        let status = StatusCode::from_u16(script.status).unwrap_or(StatusCode::BAD_GATEWAY);
        return error(status, &script.error_message);
    }
    let model = script
        .routed_model
        .clone()
        .unwrap_or_else(|| requested_model(body.as_ref()));
    let max_tokens = body
        .as_ref()
        .and_then(|b| b["max_tokens"].as_u64())
        .unwrap_or(script.completion_tokens);
    let mut provider = script.provider.clone();
    let mut prompt_tokens = script.prompt_tokens;
    let (billed_pico, completion_tokens) = match &script.cost {
        Cost::Usd(usd) => ((usd * 1e12).round() as u64, script.completion_tokens),
        Cost::PerMaxToken { pico_per_token } => (max_tokens * pico_per_token, max_tokens),
        Cost::Billed(billing) => {
            let models = state.script.lock().unwrap().models.clone();
            let models = models.unwrap_or_else(default_models);
            let body = body.clone().unwrap_or(Value::Null);
            match bill::bill(billing, &model, &body, body_len, &models) {
                Ok(b) => {
                    provider = b.provider;
                    prompt_tokens = b.prompt_tokens;
                    (b.pico, b.completion_tokens)
                }
                Err((status, message)) => {
                    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                    return error(status, &message);
                }
            }
        }
    };
    let cost = match &script.cost {
        Cost::Usd(usd) => *usd,
        _ => pico_to_f64(billed_pico),
    };
    let gen_record = Generation {
        id: id.clone(),
        model: model.clone(),
        provider,
        cost,
        billed_pico,
        prompt_tokens,
        completion_tokens,
    };
    state
        .generations
        .lock()
        .unwrap()
        .insert(id.clone(), gen_record.clone());
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "cost": cost,
        "is_byok": false,
    });
    let stream = body.as_ref().and_then(|b| b["stream"].as_bool()) == Some(true);
    if stream {
        return sse(state.clone(), script, gen_record, usage, in_flight);
    }
    if let Some(gate) = &script.hold {
        gate.wait().await;
    }
    let mut answer = json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "provider": gen_record.provider,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": script.content.concat()},
            "finish_reason": "stop"
        }],
    });
    if script.usage {
        answer["usage"] = usage;
    }
    drop(in_flight);
    with_generation_id(json_response(StatusCode::OK, &answer), &id)
}

fn with_generation_id(mut resp: Response<Body>, id: &str) -> Response<Body> {
    if let Ok(v) = header::HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-generation-id", v);
    }
    resp
}

/// An SSE answer produced by a task, event by event, through a channel.
fn sse(
    state: Arc<State>,
    script: ChatScript,
    generation: Generation,
    usage: Value,
    in_flight: InFlight,
) -> Response<Body> {
    let id = generation.id.clone();
    state.streams.lock().unwrap().push(StreamRecord {
        id: id.clone(),
        ..StreamRecord::default()
    });
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(1);
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let end = produce(&tx, &state, &script, &generation, usage).await;
        state.update_stream(&generation.id, |s| match end {
            Ended::Finished => s.finished = true,
            Ended::Cut => s.cut = true,
            Ended::ClientGone => s.client_gone = true,
        });
    });
    let mut resp = Response::new(ChannelBody(rx).boxed());
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    with_generation_id(resp, &id)
}

enum Ended {
    Finished,
    Cut,
    ClientGone,
}

/// Sends the script's events; returns how the stream ended.
async fn produce(
    tx: &mpsc::Sender<io::Result<Bytes>>,
    state: &State,
    script: &ChatScript,
    generation: &Generation,
    usage: Value,
) -> Ended {
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": generation.id,
            "object": "chat.completion.chunk",
            "created": unix_now(),
            "model": generation.model,
            "provider": generation.provider,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let gone = || Ended::ClientGone;
    if script.keepalive && !send(tx, ": OPENROUTER PROCESSING\n\n".into()).await {
        return gone();
    }
    for (i, piece) in script.content.iter().enumerate() {
        if i > 0 && !pause(tx, script.event_delay).await {
            return gone();
        }
        let delta = if i == 0 {
            json!({"role": "assistant", "content": piece})
        } else {
            json!({"content": piece})
        };
        if !send_event(tx, state, &generation.id, &chunk(delta, Value::Null)).await {
            return gone();
        }
        if i == 0
            && let Some(gate) = &script.hold
        {
            tokio::select! {
                _ = gate.wait() => {}
                _ = tx.closed() => return gone(),
            }
        }
    }
    if !pause(tx, script.event_delay).await {
        return gone();
    }
    match &script.end {
        StreamEnd::Done => {
            let mut last = chunk(json!({"content": ""}), json!("stop"));
            if script.usage {
                last["usage"] = usage;
            }
            if !send_event(tx, state, &generation.id, &last).await
                || !send(tx, "data: [DONE]\n\n".into()).await
            {
                return gone();
            }
            Ended::Finished
        }
        StreamEnd::MidStreamError { code, message } => {
            let mut event = chunk(json!({"content": ""}), json!("error"));
            event["error"] = json!({"code": code, "message": message});
            if !send_event(tx, state, &generation.id, &event).await {
                return gone();
            }
            Ended::Finished
        }
        StreamEnd::Cut => {
            // Let the connection flush what was sent: hyper aborts at once on a body error, so
            // an error right behind the last event would swallow it.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let _ = tx
                .send(Err(io::Error::other("fake openrouter cuts the stream")))
                .await;
            Ended::Cut
        }
    }
}

async fn send(tx: &mpsc::Sender<io::Result<Bytes>>, bytes: Bytes) -> bool {
    tx.send(Ok(bytes)).await.is_ok()
}

async fn send_event(
    tx: &mpsc::Sender<io::Result<Bytes>>,
    state: &State,
    id: &str,
    event: &Value,
) -> bool {
    // Counted before it is handed over: a fast proxy can deliver the event to the client before
    // this task runs again, and a test reading the count then must already see it.
    state.update_stream(id, |s| s.events_sent += 1);
    let ok = send(tx, Bytes::from(format!("data: {event}\n\n"))).await;
    if !ok {
        state.update_stream(id, |s| s.events_sent -= 1);
    }
    ok
}

/// Sleeps `d`, returning false early if the peer went away.
async fn pause(tx: &mpsc::Sender<io::Result<Bytes>>, d: std::time::Duration) -> bool {
    if d.is_zero() {
        return !tx.is_closed();
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = tx.closed() => false,
    }
}

fn embeddings(state: &Arc<State>, id: String, body: Option<Value>) -> Response<Body> {
    let _in_flight = InFlight::enter(state);
    let script = state.script.lock().unwrap().embeddings.clone();
    let model = requested_model(body.as_ref());
    state.generations.lock().unwrap().insert(
        id.clone(),
        Generation {
            id: id.clone(),
            model: model.clone(),
            provider: "OpenAI".into(),
            cost: script.cost,
            billed_pico: (script.cost * 1e12).round() as u64,
            prompt_tokens: script.prompt_tokens,
            completion_tokens: 0,
        },
    );
    let answer = json!({
        "id": id,
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "model": model,
        "provider": "OpenAI",
        "usage": {
            "prompt_tokens": script.prompt_tokens,
            "total_tokens": script.prompt_tokens,
            "cost": script.cost,
        },
    });
    with_generation_id(json_response(StatusCode::OK, &answer), &id)
}

fn generation(state: &State, query: Option<&str>) -> Response<Body> {
    let id = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("id="))
        .unwrap_or("")
        .to_string();
    if id.is_empty() {
        return error(StatusCode::BAD_REQUEST, "id is required");
    }
    let script = state.script.lock().unwrap().generation.clone();
    let seen = {
        let mut lookups = state.lookups.lock().unwrap();
        let n = lookups.entry(id.clone()).or_insert(0);
        *n += 1;
        *n
    };
    if seen <= script.misses {
        return error(StatusCode::NOT_FOUND, "Generation not found");
    }
    let known = state.generations.lock().unwrap().get(&id).cloned();
    let cost = script
        .cost
        .or(known.as_ref().map(|g| g.cost))
        .unwrap_or(0.0042);
    let g = known.unwrap_or_else(|| Generation {
        id: id.clone(),
        model: "openai/gpt-4o-mini".into(),
        provider: "OpenAI".into(),
        cost,
        billed_pico: (cost * 1e12).round() as u64,
        prompt_tokens: 10,
        completion_tokens: 5,
    });
    json_response(
        StatusCode::OK,
        &json!({"data": {
            "id": id,
            "total_cost": cost,
            "tokens_prompt": g.prompt_tokens,
            "tokens_completion": g.completion_tokens,
            "native_tokens_prompt": g.prompt_tokens,
            "native_tokens_completion": g.completion_tokens,
            "model": g.model,
            "provider_name": g.provider,
            "is_byok": false,
            "streamed": false,
        }}),
    )
}

fn workspace(state: &State, id: &str, bearer: Option<&str>) -> Response<Body> {
    if bearer != Some(MANAGEMENT_KEY) {
        return error(
            StatusCode::UNAUTHORIZED,
            "a management key is required for this endpoint",
        );
    }
    let w = state.script.lock().unwrap().workspace.clone();
    if w.fail {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
    }
    json_response(
        StatusCode::OK,
        &json!({"data": {
            "id": id,
            "name": "fake workspace",
            "is_observability_io_logging_enabled": w.io_logging,
            "is_observability_broadcast_enabled": w.broadcast,
            "is_data_discount_logging_enabled": w.data_discount,
        }}),
    )
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(v.to_string()))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// OpenRouter's error shape: `{"error":{"code":N,"message":"..."}}`.
fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"error": {"code": status.as_u16(), "message": message}}),
    )
}

/// A body fed by a channel; an `Err` item aborts the response (h1: connection closed before the
/// terminating chunk; h2: RST_STREAM).
struct ChannelBody(mpsc::Receiver<io::Result<Bytes>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}
