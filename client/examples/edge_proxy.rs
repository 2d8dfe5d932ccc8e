//! A small edge proxy: every request is checked with Tollgate (through
//! `TollgateLayer`) and, if allowed, forwarded to the upstream with the
//! signed identity header.
//!
//! Against `tollgate dev` (create an API, a plan, a key and a `check` token first,
//! as in the README):
//!
//! ```sh
//! cargo run -p tollgate-client --features tower --example edge_proxy -- \
//!     127.0.0.1:8080 http://127.0.0.1:3000 petstore prod 127.0.0.1:10081 "$CHECK_TOKEN"
//! curl -i -H "x-api-key: tgk_..." http://127.0.0.1:8080/pets/7
//! ```

use std::net::SocketAddr;

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tollgate_client::{Client, ClientConfig, TollgateLayer};

/// Largest body forwarded.
const MAX_BODY: usize = 10 << 20;

#[derive(Clone)]
struct Upstream {
    base: String,
    http: reqwest::Client,
}

/// Forwards an allowed request (with the headers the layer added) upstream.
async fn forward(State(upstream): State<Upstream>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = to_bytes(body, MAX_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
    };
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut outgoing = upstream.http.request(parts.method, format!("{}{path}", upstream.base)).body(body);
    for (name, value) in &parts.headers {
        if name != "host" {
            outgoing = outgoing.header(name, value);
        }
    }
    match outgoing.send().await {
        Ok(answer) => {
            let status = answer.status();
            let headers = answer.headers().clone();
            let bytes = answer.bytes().await.unwrap_or_default();
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("upstream: {e}")).into_response(),
    }
}

/// Puts the client's address where the layer looks for it.
async fn client_addr(ConnectInfo(addr): ConnectInfo<SocketAddr>, mut request: Request, next: Next) -> Response {
    request.extensions_mut().insert(addr);
    next.run(request).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, api, stage, nodes, token] = args.as_slice() else {
        eprintln!("usage: edge_proxy LISTEN UPSTREAM_URL API STAGE NODE_WIRE_ADDRS(comma-separated) CHECK_TOKEN");
        std::process::exit(2);
    };
    let client = Client::new(ClientConfig::new(nodes.split(','), token.as_str()));
    let upstream = Upstream { base: upstream.trim_end_matches('/').to_string(), http: reqwest::Client::new() };
    let app = Router::new()
        .fallback(forward)
        .with_state(upstream)
        .layer(TollgateLayer::new(client, api, stage))
        .layer(middleware::from_fn(client_addr));
    let listener = tokio::net::TcpListener::bind(listen.as_str()).await?;
    println!("edge proxy on http://{listen}, checking {api}/{stage}");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
    Ok(())
}
