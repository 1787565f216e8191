//! The bare echo: tonic alone, one unary method, no layers, for `benches/layers.sh`
//! to measure what citypark's own layers cost a call (issue 22, item 8).
//!
//! It answers `citypark.v1.Availability/Ping` exactly as the handler does (the same
//! messages, the same codec, the same allocator), so the only difference from
//! citypark's `Ping` is everything citypark puts around a call: admission, metrics,
//! gRPC-Web, CORS, the connection wrapper. Every other path is UNIMPLEMENTED.
//!
//! `cargo bench --bench echo -- 127.0.0.1:50171` serves until killed; without an
//! address it serves on 127.0.0.1:50171.

use std::{
    convert::Infallible,
    future::{Ready, ready},
    task::{Context, Poll},
};

use citypark::pb;
use futures_util::future::BoxFuture;
use tonic::{
    Request, Response, Status,
    body::Body,
    server::{Grpc, NamedService, UnaryService},
    transport::Server,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone)]
struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = "citypark.v1.Availability";
}

struct Ping;

impl UnaryService<pb::PingRequest> for Ping {
    type Response = pb::PingResponse;
    type Future = Ready<Result<Response<pb::PingResponse>, Status>>;

    fn call(&mut self, request: Request<pb::PingRequest>) -> Self::Future {
        ready(Ok(Response::new(pb::PingResponse {
            payload: request.into_inner().payload,
        })))
    }
}

impl tower::Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    // What tonic's generated server does for one method.
    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != "/citypark.v1.Availability/Ping" {
                return Ok(Status::unimplemented("only Ping is served").into_http());
            }
            let mut grpc = Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(Ping, request).await)
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "127.0.0.1:50171".into())
        .parse()?;
    eprintln!("bare tonic echo on {addr}");
    Server::builder().add_service(Echo).serve(addr).await?;
    Ok(())
}
