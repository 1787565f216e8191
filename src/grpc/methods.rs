//! Every method the server serves, read from the descriptors it is built from (citypark's
//! services, health, reflection): the label a method's request metrics carry, and
//! whether it takes exactly one request message, which the admission layer holds a
//! call to (see [`OneMessage`]).
//!
//! Read from the descriptors rather than listed by hand, so that a method added to
//! `proto/` is labelled and held to its cardinality without anyone remembering to.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::LazyLock,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use prost::Message;
use tonic::Status;
use xxhash_rust::xxh3::Xxh3Builder;

/// One method of the table.
#[derive(Debug)]
pub struct Method {
    /// The method's path: `/citypark.v1.Availability/Ping`.
    pub path: &'static str,
    /// The path without its leading slash: `citypark.v1.Availability/Ping`.
    pub label: &'static str,
    /// A unary or server-streaming method: the client sends exactly one message.
    pub one_request: bool,
}

/// Methods by index; an index is what the metrics layer keeps its handles by.
pub struct Table {
    pub methods: Vec<Method>,
    /// By path, hashed with xxh3: looked up twice a call (metrics, admission).
    by_path: HashMap<&'static str, usize, Xxh3Builder>,
}

impl Table {
    /// The index of the method at `path` (`/package.Service/Method`).
    pub fn find(&self, path: &str) -> Option<usize> {
        self.by_path.get(path).copied()
    }
}

/// The table, read once.
pub static METHODS: LazyLock<Table> = LazyLock::new(|| {
    let sets: [&[u8]; 4] = [
        crate::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = Vec::new();
    for set in sets {
        let set = prost_types::FileDescriptorSet::decode(set).expect("built-in descriptor set");
        for file in set.file {
            let package = file.package();
            for service in &file.service {
                for method in &service.method {
                    // Leaked once, for the life of the process: the label set is fixed.
                    let path = format!("/{package}.{}/{}", service.name(), method.name());
                    let path: &'static str = Box::leak(path.into_boxed_str());
                    methods.push(Method {
                        path,
                        label: &path[1..],
                        one_request: !method.client_streaming(),
                    });
                }
            }
        }
    }
    // The same method in two sets (none today) is one method.
    methods.sort_by_key(|m| m.label);
    methods.dedup_by_key(|m| m.label);
    let by_path = methods
        .iter()
        .enumerate()
        .map(|(i, m)| (m.path, i))
        .collect();
    Table { methods, by_path }
});

/// What a second request message on a unary or server-streaming method is answered:
/// gRPC's status-code table calls it a cardinality violation, UNIMPLEMENTED.
pub fn cardinality_violation() -> Status {
    Status::unimplemented(
        "this method takes one request message and the call sent more (a cardinality violation)",
    )
}

pin_project_lite::pin_project! {
    /// A request body held to one gRPC message: past the end of the first message, any
    /// byte fails the body with [`cardinality_violation`], which tonic answers as the
    /// call's status. tonic alone reads the first message and drops the rest unread.
    /// Bodies of methods that may stream requests pass untouched.
    pub struct OneMessage<B> {
        #[pin]
        inner: B,
        state: Frame,
    }
}

/// Where the body is in its first message.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Frame {
    /// Not held: a client-streaming method, or a path no method has.
    Free,
    /// In the 5-byte prefix (a flag byte, then the length, big-endian): bytes read so
    /// far and the length they make.
    Prefix { read: u8, length: u32 },
    /// In the message: bytes still to come.
    Message { left: u64 },
    /// The first message is whole; nothing more may come.
    Done,
}

impl<B> OneMessage<B> {
    pub fn new(inner: B, held: bool) -> Self {
        let state = if held {
            Frame::Prefix { read: 0, length: 0 }
        } else {
            Frame::Free
        };
        Self { inner, state }
    }
}

impl Frame {
    /// Follows `bytes`; false when they go past the first message.
    fn follow(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match self {
                Frame::Free => return true,
                Frame::Prefix { read, length } => {
                    if *read > 0 {
                        *length = (*length << 8) | u32::from(bytes[0]);
                    }
                    *read += 1;
                    bytes = &bytes[1..];
                    if *read == 5 {
                        *self = match *length {
                            0 => Frame::Done,
                            n => Frame::Message { left: u64::from(n) },
                        };
                    }
                }
                Frame::Message { left } => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        *self = Frame::Done;
                    }
                }
                Frame::Done => return false,
            }
        }
        true
    }
}

impl<B> http_body::Body for OneMessage<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = Bytes;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && *this.state != Frame::Free
                    && !this.state.follow(data.chunk())
                {
                    return Poll::Ready(Some(Err(Box::new(cardinality_violation()))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut f = vec![0];
        f.extend((message.len() as u32).to_be_bytes());
        f.extend(message);
        f
    }

    #[test]
    fn the_table_holds_every_served_method_and_knows_which_stream_requests() {
        let t = &*METHODS;
        let one = |p: &str| t.methods[t.find(p).unwrap()].one_request;
        assert!(one("/citypark.v1.Availability/Ping"));
        assert!(one("/citypark.v1.Availability/WatchAvailability"));
        assert!(one("/citypark.v1.Sessions/GetSettlement"));
        assert!(one("/grpc.health.v1.Health/Watch"));
        assert!(!one("/citypark.v1.Ingest/Publish"));
        assert!(!one(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert_eq!(t.find("/citypark.v1.Availability/Nope"), None);
        let i = t.find("/citypark.v1.Registry/UpsertCarPark").unwrap();
        assert_eq!(t.methods[i].label, "citypark.v1.Registry/UpsertCarPark");
    }

    #[test]
    fn one_message_passes_in_any_split_and_a_second_is_caught_wherever_it_starts() {
        let one = frame(b"hello, citypark");
        let two = [one.clone(), frame(b"")].concat();
        for split in 0..=one.len() {
            let mut f = Frame::Prefix { read: 0, length: 0 };
            assert!(
                f.follow(&one[..split]) && f.follow(&one[split..]),
                "{split}"
            );
            assert_eq!(f, Frame::Done);
        }
        for split in 0..=two.len() {
            let mut f = Frame::Prefix { read: 0, length: 0 };
            let passed = f.follow(&two[..split]) && f.follow(&two[split..]);
            assert!(!passed, "a second message split at {split} went through");
        }
        // An empty message is whole after its prefix.
        let mut f = Frame::Prefix { read: 0, length: 0 };
        assert!(f.follow(&frame(b"")));
        assert!(!f.follow(&[0]));
    }
}
