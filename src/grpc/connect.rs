//! Every unary method over plain HTTP by the Connect protocol's unary rules, on the
//! gRPC port: `POST /citypark.v1.<Service>/<Method>` with `Content-Type:
//! application/json` (the proto3 JSON mapping of the request) or `application/proto`
//! (its binary encoding); the answer is the response in the same encoding, and an error
//! is Connect's JSON error (`{"code": "invalid_argument", "message": …, "details": […]}`)
//! with Connect's HTTP status for the code.
//!
//! One mechanism for every method, read from the descriptors the server is built from:
//! the call is translated into a gRPC call on the same path and sent down the same
//! stack as any other (request metrics, CORS, admission with its keys, tokens, rate
//! limits and limits), and its answer translated back. Server streams (`Watch…`) stay
//! gRPC and gRPC-Web: their Connect framing is a protocol of its own, and a sign or a
//! barrier that cannot hold a stream polls, or takes MQTT.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::LazyLock,
    task::{Context, Poll},
    time::Instant,
};

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full, Limited};
use prost::Message as _;
use prost_reflect::{DescriptorPool, MessageDescriptor};
use tonic::Code;
use tower::{Layer, Service};

use super::{MetricsLayer, methods::METHODS, protojson::Plans, status::code_label};

/// A method served over Connect: its request and response messages.
struct Unary {
    input: MessageDescriptor,
    output: MessageDescriptor,
}

/// What a path names.
enum Known {
    Unary(Unary),
    /// Client, server or bidirectional streaming: gRPC and gRPC-Web only.
    Streaming,
}

/// Every method of citypark's services and health, by path.
/// The descriptors of citypark's services and health, whose unary methods are served.
static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    let mut pool = DescriptorPool::new();
    for set in [
        crate::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        pool.decode_file_descriptor_set(set)
            .expect("built-in descriptor set");
    }
    pool
});

/// How each message of [`POOL`] is written as JSON.
pub(super) static PLANS: LazyLock<Plans> = LazyLock::new(|| Plans::new(&POOL));

/// Every method of [`POOL`], by path.
static PATHS: LazyLock<HashMap<String, Known>> = LazyLock::new(|| {
    POOL.services()
        .flat_map(|service| service.methods().collect::<Vec<_>>())
        .map(|method| {
            let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
            let known = if method.is_client_streaming() || method.is_server_streaming() {
                Known::Streaming
            } else {
                Known::Unary(Unary {
                    input: method.input(),
                    output: method.output(),
                })
            };
            (path, known)
        })
        .collect()
});

/// A Connect unary request's encoding, by its content type.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Codec {
    Json,
    Proto,
}

impl Codec {
    /// The encoding a content type names, if it is one of Connect's unary ones
    /// (parameters such as `charset=utf-8` aside).
    fn of(headers: &HeaderMap) -> Option<Codec> {
        let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let essence = value.split(';').next()?.trim();
        if essence.eq_ignore_ascii_case("application/json") {
            Some(Codec::Json)
        } else if essence.eq_ignore_ascii_case("application/proto") {
            Some(Codec::Proto)
        } else {
            None
        }
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Codec::Json => "application/json",
            Codec::Proto => "application/proto",
        })
    }

    /// The request in the protobuf encoding.
    fn request(self, descriptor: &MessageDescriptor, body: Bytes) -> Result<Bytes, Refusal> {
        match self {
            Codec::Proto => Ok(body),
            Codec::Json => {
                // An empty body is the empty message (`curl -X POST` without `-d`).
                let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
                    b"{}"
                } else {
                    &body
                };
                let mut message = Vec::with_capacity(body.len());
                PLANS
                    .read(descriptor.full_name(), text, &mut message)
                    .map_err(|e| {
                        Refusal::new(
                            Code::InvalidArgument,
                            format!(
                                "the body is not {} in proto3 JSON: {}",
                                descriptor.full_name(),
                                e.0
                            ),
                        )
                    })?;
                Ok(message.into())
            }
        }
    }

    /// The response, from the protobuf encoding.
    fn response(self, descriptor: &MessageDescriptor, message: Bytes) -> Result<Bytes, Refusal> {
        match self {
            Codec::Proto => Ok(message),
            Codec::Json => {
                let internal = |e: &dyn std::fmt::Display| {
                    tracing::error!(error = %e, message = descriptor.full_name(), "connect: answer not translated");
                    Refusal::new(Code::Internal, "the answer could not be translated")
                };
                // Every field, zero values included: a client in a language without
                // proto3's defaults reads `"available": 0`, not a missing key.
                let mut out = Vec::with_capacity(message.len() * 3);
                PLANS
                    .write(descriptor.full_name(), &message, &mut out)
                    .map_err(|_| internal(&"not the message its descriptor describes"))?;
                Ok(out.into())
            }
        }
    }
}

/// A call answered by this layer: a Connect error.
#[derive(Debug)]
struct Refusal {
    code: Code,
    message: String,
    /// `google.protobuf.Any` details, as gRPC's `grpc-status-details-bin` carries them.
    details: Vec<prost_types::Any>,
    /// Headers to send with it: the call's metadata, or what the refusal asks for.
    headers: Vec<(header::HeaderName, HeaderValue)>,
    /// The HTTP status, when not the one Connect gives the code.
    status: Option<StatusCode>,
}

impl Refusal {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
            headers: Vec::new(),
            status: None,
        }
    }

    /// Connect's error: its JSON and the HTTP status Connect gives the code.
    fn response<B>(self) -> http::Response<ConnectBody<B>> {
        let mut error = serde_json::json!({ "code": connect_code(self.code) });
        if !self.message.is_empty() {
            error["message"] = self.message.into();
        }
        if !self.details.is_empty() {
            let base64 = base64::engine::general_purpose::STANDARD_NO_PAD;
            error["details"] = self
                .details
                .iter()
                .map(|any| {
                    serde_json::json!({
                        "type": any.type_url.rsplit('/').next().unwrap_or_default(),
                        "value": base64.encode(&any.value),
                    })
                })
                .collect();
        }
        let mut response = http::Response::new(ConnectBody::Full {
            data: Some(Bytes::from(error.to_string())),
        });
        *response.status_mut() = self.status.unwrap_or_else(|| http_status(self.code));
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// Connect's name of a code (an error's: OK has none, and is named as gRPC names it).
fn connect_code(code: Code) -> &'static str {
    match code as usize {
        n @ 1..=16 => super::connect_codes::CODES[n - 1],
        _ => code_label(code),
    }
}

/// The HTTP status Connect's protocol gives each code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).expect("a valid status"),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// What a request to the gRPC port speaks, by its content type.
enum Protocol {
    /// gRPC or gRPC-Web (`application/grpc…`), or a CORS preflight: the stack's.
    Grpc,
    /// A Connect unary call.
    Connect,
    /// Neither: answered here, in Connect's terms, as the plain HTTP client that sent
    /// it most likely speaks them.
    Neither,
}

fn protocol<B>(request: &http::Request<B>) -> Protocol {
    if Codec::of(request.headers()).is_some() {
        return Protocol::Connect;
    }
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc || request.method() == Method::OPTIONS {
        Protocol::Grpc
    } else {
        Protocol::Neither
    }
}

/// The answer to a request in no protocol the port speaks: a POST without a content
/// type it knows is 415 (Connect's answer), anything else 405.
fn unsupported(method: &Method) -> Refusal {
    if *method != Method::POST {
        return not_a_post();
    }
    let mut refusal = Refusal::new(
        Code::InvalidArgument,
        "send Content-Type application/json (or application/proto) for HTTP/JSON by the \
         Connect protocol, or application/grpc for gRPC",
    );
    refusal.status = Some(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    refusal.headers.push((
        header::HeaderName::from_static("accept-post"),
        HeaderValue::from_static("application/json, application/proto"),
    ));
    refusal
}

/// Connect's unary calls are POSTs (its GET for side-effect-free methods is not served).
fn not_a_post() -> Refusal {
    let mut refusal = Refusal::new(
        Code::Unimplemented,
        "a Connect unary call is a POST (GET is not served)",
    );
    refusal.status = Some(StatusCode::METHOD_NOT_ALLOWED);
    refusal
        .headers
        .push((header::ALLOW, HeaderValue::from_static("POST")));
    refusal
}

/// Translates Connect unary calls; see the module's documentation. Outermost, so that
/// the call it makes goes through the whole stack, request metrics included: `metrics`
/// counts the calls it refuses itself (a body that is not the method's JSON) as the
/// request metrics count any other.
#[derive(Clone)]
pub struct ConnectLayer {
    max_message_bytes: usize,
    metrics: MetricsLayer,
}

impl ConnectLayer {
    pub fn new(max_message_bytes: usize, metrics: MetricsLayer) -> Self {
        Self {
            max_message_bytes,
            metrics,
        }
    }
}

impl<S> Layer<S> for ConnectLayer {
    type Service = ConnectService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConnectService {
            inner,
            max_message_bytes: self.max_message_bytes,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`ConnectLayer`].
#[derive(Clone)]
pub struct ConnectService<S> {
    inner: S,
    max_message_bytes: usize,
    metrics: MetricsLayer,
}

type Body = tonic::body::Body;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, RB> Service<http::Request<Body>> for ConnectService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: std::fmt::Display,
{
    type Response = http::Response<ConnectBody<RB>>;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match protocol(&request) {
            Protocol::Grpc => {
                return Either::Native {
                    future: self.inner.call(request),
                };
            }
            Protocol::Neither => {
                let answer = unsupported(request.method()).response();
                return Either::Connect {
                    future: Box::pin(std::future::ready(Ok(answer))),
                };
            }
            Protocol::Connect => {}
        }
        // The ready service makes the call, and a clone stays for the next one.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let (max, metrics) = (self.max_message_bytes, self.metrics.clone());
        Either::Connect {
            future: Box::pin(unary(inner, request, max, metrics)),
        }
    }
}

/// One Connect unary call, start to end.
async fn unary<S, RB>(
    mut inner: S,
    request: http::Request<Body>,
    max_message_bytes: usize,
    metrics: MetricsLayer,
) -> Result<http::Response<ConnectBody<RB>>, S::Error>
where
    S: Service<http::Request<Body>, Response = http::Response<RB>>,
    RB: http_body::Body<Data = Bytes>,
    RB::Error: std::fmt::Display,
{
    let start = Instant::now();
    let (parts, body) = request.into_parts();
    let codec = Codec::of(&parts.headers).expect("a Connect call");
    let path = parts.uri.path().to_owned();
    let method = match check(&parts, &path) {
        Ok(method) => method,
        Err(refusal) => return Ok(refusal.response()),
    };
    let refused = |refusal: Refusal| {
        // Refused before the stack saw it: counted here, as the stack would have.
        metrics.record(
            METHODS.find(&path),
            refusal.code,
            start.elapsed().as_secs_f64(),
        );
        Ok(refusal.response())
    };
    let body = match Limited::new(body, max_message_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return refused(Refusal::new(
                Code::ResourceExhausted,
                format!("the request is larger than {max_message_bytes} bytes"),
            ));
        }
        Err(_) => {
            return refused(Refusal::new(
                Code::InvalidArgument,
                "the request's body could not be read",
            ));
        }
    };
    let message = match codec.request(&method.input, body) {
        Ok(message) => message,
        Err(refusal) => return refused(refusal),
    };
    let grpc = grpc_request(parts, &message);
    let response = inner.call(grpc).await?;
    Ok(answer(response, codec, &method.output)
        .await
        .unwrap_or_else(Refusal::response))
}

/// The method a Connect call names, if it may be called so: a POST, of protocol
/// version 1 if it says, uncompressed, to a unary method.
fn check(parts: &http::request::Parts, path: &str) -> Result<&'static Unary, Refusal> {
    if parts.method != Method::POST {
        return Err(not_a_post());
    }
    if let Some(version) = parts.headers.get("connect-protocol-version")
        && version != "1"
    {
        return Err(Refusal::new(
            Code::InvalidArgument,
            "connect-protocol-version must be 1",
        ));
    }
    for name in ["content-encoding", "connect-content-encoding"] {
        if let Some(encoding) = parts.headers.get(name)
            && encoding != "identity"
        {
            let mut refusal = Refusal::new(
                Code::Unimplemented,
                format!("{name} {encoding:?} is not served: send the body uncompressed"),
            );
            refusal.headers.push((
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            ));
            return Err(refusal);
        }
    }
    match PATHS.get(path) {
        Some(Known::Unary(unary)) => Ok(unary),
        Some(Known::Streaming) => Err(Refusal::new(
            Code::Unimplemented,
            format!("{path} streams: it is served over gRPC and gRPC-Web only"),
        )),
        None => {
            let mut refusal = Refusal::new(Code::Unimplemented, format!("no method {path}"));
            // No such resource: 404, as Connect's servers answer an unknown procedure.
            refusal.status = Some(StatusCode::NOT_FOUND);
            Err(refusal)
        }
    }
}

/// The gRPC call a Connect call makes: the same path, headers (the API key or token,
/// the caller's metadata) and connection, the message in a gRPC frame, and Connect's
/// timeout as gRPC's.
fn grpc_request(parts: http::request::Parts, message: &[u8]) -> http::Request<Body> {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    let mut request = http::Request::from_parts(parts, Body::new(Full::new(framed.freeze())));
    // The stack below serves gRPC, which is HTTP/2; the connection stays what it is.
    *request.version_mut() = Version::HTTP_2;
    let headers = request.headers_mut();
    let timeout = headers
        .remove("connect-timeout-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::ACCEPT_ENCODING,
        header::HeaderName::from_static("connect-protocol-version"),
        header::HeaderName::from_static("connect-content-encoding"),
        header::HeaderName::from_static("connect-accept-encoding"),
    ] {
        headers.remove(name);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    if let Some(ms) = timeout {
        // gRPC's timeout takes at most eight digits.
        let value = format!("{}m", ms.min(99_999_999));
        headers.insert(
            "grpc-timeout",
            HeaderValue::from_str(&value).expect("digits"),
        );
    }
    request
}

/// The Connect answer to a gRPC answer: the message in the caller's encoding, or the
/// error, with the answer's metadata as headers (trailers prefixed `trailer-`).
async fn answer<RB>(
    response: http::Response<RB>,
    codec: Codec,
    output: &MessageDescriptor,
) -> Result<http::Response<ConnectBody<RB>>, Refusal>
where
    RB: http_body::Body<Data = Bytes>,
    RB::Error: std::fmt::Display,
{
    let (parts, body) = response.into_parts();
    let mut body = std::pin::pin!(body);
    // A unary answer is one data frame and the trailers: the frame is kept as it is,
    // not copied, unless more come.
    let (mut data, mut more, mut trailers) = (Bytes::new(), BytesMut::new(), HeaderMap::new());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            tracing::warn!(error = %e, "connect: the answer's body failed");
            Refusal::new(Code::Internal, "the answer was cut short")
        })?;
        match frame.into_data() {
            Ok(chunk) if data.is_empty() && more.is_empty() => data = chunk,
            Ok(chunk) => {
                if more.is_empty() {
                    more.extend_from_slice(&data);
                }
                more.extend_from_slice(&chunk);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = t;
                }
            }
        }
    }
    if !more.is_empty() {
        data = more.freeze();
    }
    let mut headers = metadata(&parts.headers);
    for (name, value) in metadata(&trailers).iter() {
        if let Ok(name) = header::HeaderName::from_bytes(format!("trailer-{name}").as_bytes()) {
            headers.append(name, value.clone());
        }
    }
    // A trailers-only answer (an error before any message) has its status in the
    // headers; otherwise it is in the trailers. OK is read without building a Status.
    let ok = match parts.headers.get("grpc-status") {
        Some(code) => code == "0",
        None => trailers.get("grpc-status").is_some_and(|code| code == "0"),
    };
    if !ok {
        let status = tonic::Status::from_header_map(&parts.headers)
            .or_else(|| tonic::Status::from_header_map(&trailers))
            .unwrap_or_else(|| tonic::Status::unknown("the answer had no status"));
        return Err(Refusal {
            code: status.code(),
            message: status.message().to_owned(),
            details: details(status.details()),
            headers: headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            status: None,
        });
    }
    // One uncompressed message: a flag byte, its length, then the message.
    let message = match *data.as_ref() {
        [0, a, b, c, d, ..] => {
            let end = 5 + u32::from_be_bytes([a, b, c, d]) as usize;
            (data.len() == end).then(|| data.slice(5..end))
        }
        _ => None,
    }
    .ok_or_else(|| Refusal::new(Code::Internal, "the answer held no message"))?;
    let body = codec.response(output, message)?;
    let mut response = http::Response::new(ConnectBody::Full { data: Some(body) });
    *response.headers_mut() = headers;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, codec.content_type());
    Ok(response)
}

/// A gRPC answer's metadata: its headers but gRPC's own and the transport's.
fn metadata(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for (name, value) in headers {
        let name_str = name.as_str();
        if name_str.starts_with("grpc-")
            || name == header::CONTENT_TYPE
            || name == header::CONTENT_LENGTH
            || name == header::TE
            || name == header::TRAILER
        {
            continue;
        }
        kept.append(name.clone(), value.clone());
    }
    kept
}

/// The details of a `grpc-status-details-bin` (a `google.rpc.Status`).
fn details(bytes: &[u8]) -> Vec<prost_types::Any> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
        #[prost(message, repeated, tag = "3")]
        details: Vec<prost_types::Any>,
    }
    if bytes.is_empty() {
        return Vec::new();
    }
    RpcStatus::decode(bytes).map_or_else(|_| Vec::new(), |s| s.details)
}

pin_project_lite::pin_project! {
    /// The answer's body: the stack's, for a call that was not Connect, or the whole
    /// Connect answer.
    #[project = ConnectBodyProjection]
    pub enum ConnectBody<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
    }
}

impl<B> http_body::Body for ConnectBody<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            ConnectBodyProjection::Inner { body } => body.poll_frame(cx),
            ConnectBodyProjection::Full { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ConnectBody::Inner { body } => body.is_end_stream(),
            ConnectBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ConnectBody::Inner { body } => body.size_hint(),
            ConnectBody::Full { data } => {
                http_body::SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of either path.
    #[project = EitherProjection]
    pub enum Either<N, C> {
        Native { #[pin] future: N },
        Connect { #[pin] future: C },
    }
}

impl<N, C, RB, E> Future for Either<N, C>
where
    N: Future<Output = Result<http::Response<RB>, E>>,
    C: Future<Output = Result<http::Response<ConnectBody<RB>>, E>>,
{
    type Output = Result<http::Response<ConnectBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            EitherProjection::Native { future } => future
                .poll(cx)
                .map(|r| r.map(|response| response.map(|body| ConnectBody::Inner { body }))),
            EitherProjection::Connect { future } => future.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_connects_name_and_status() {
        assert_eq!(connect_code(Code::Cancelled), "canceled");
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
        assert_eq!(http_status(Code::ResourceExhausted).as_u16(), 429);
        assert_eq!(http_status(Code::Unauthenticated).as_u16(), 401);
        assert_eq!(http_status(Code::FailedPrecondition).as_u16(), 400);
        // Connect's names (connectrpc.com/docs/protocol, "Error Codes").
        assert_eq!(
            (1..17)
                .map(Code::from_i32)
                .map(connect_code)
                .collect::<Vec<_>>(),
            [
                "canceled",
                "unknown",
                "invalid_argument",
                "deadline_exceeded",
                "not_found",
                "already_exists",
                "permission_denied",
                "resource_exhausted",
                "failed_precondition",
                "aborted",
                "out_of_range",
                "unimplemented",
                "internal",
                "unavailable",
                "data_loss",
                "unauthenticated",
            ]
        );
    }

    #[test]
    fn every_unary_method_is_served_and_streams_are_not() {
        assert!(matches!(
            PATHS.get("/citypark.v1.Availability/FindNearby"),
            Some(Known::Unary(_))
        ));
        assert!(matches!(
            PATHS.get("/grpc.health.v1.Health/Check"),
            Some(Known::Unary(_))
        ));
        assert!(matches!(
            PATHS.get("/citypark.v1.Ingest/Publish"),
            Some(Known::Streaming)
        ));
    }

    #[test]
    fn json_is_translated_both_ways_by_the_descriptors() {
        let Some(Known::Unary(find)) = PATHS.get("/citypark.v1.Availability/FindNearby") else {
            panic!("FindNearby is unary");
        };
        let proto = Codec::Json
            .request(
                &find.input,
                Bytes::from_static(
                    br#"{"location": {"latitude": 36.06, "longitude": 120.38}, "radiusM": 800}"#,
                ),
            )
            .unwrap();
        let request = crate::pb::FindNearbyRequest::decode(proto).unwrap();
        assert_eq!(request.radius_m, 800.0);
        let refused = Codec::Json
            .request(&find.input, Bytes::from_static(br#"{"radius": 800}"#))
            .unwrap_err();
        assert_eq!(refused.code, Code::InvalidArgument);
        assert!(
            refused.message.contains("citypark.v1.FindNearbyRequest"),
            "{}",
            refused.message
        );
    }
}
