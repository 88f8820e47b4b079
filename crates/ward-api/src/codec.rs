//! The protobuf codec of the control plane's `ward.v1` server: prost's
//! encoding, with buffers sized to the messages.
//!
//! tonic's default codec gives each call an 8 KiB encode buffer up front,
//! and a streaming call keeps its buffer (grown to the largest message it
//! sent) for as long as it is open. A control plane holding a watch
//! stream per sidecar paid those 8 KiB per sidecar whatever it sent. Here
//! a buffer starts at 64 bytes and is reserved at the message's exact
//! encoded length, so a stream holds what its messages need and no more.
//!
//! The sidecar's side (the `ward.v1` client, the Workload API) keeps
//! tonic's prost codec: its code is laid out by the recorded symbol order
//! (crates/ward-cli/build.rs), which names tonic's functions by the codec
//! they were built for.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, EncodeBuf};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// A 64-byte buffer up front (not none: tonic also grows compression
/// buffers in steps of this size, and divides by it); tonic's batching
/// threshold for streams unchanged.
fn settings() -> BufferSettings {
    BufferSettings::new(64, 32 * 1024)
}

/// `application/grpc+proto` through prost, with [`settings`].
#[derive(Debug, Clone)]
pub struct Codec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = Encoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        Encoder(ProstCodec::<T, U>::raw_encoder(settings()))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

/// prost's encoder, after reserving the message's encoded length at once
/// (instead of growing the buffer by doubling as the fields are written).
#[derive(Debug, Clone)]
pub struct Encoder<T>(ProstEncoder<T>);

impl<T: Message> tonic::codec::Encoder for Encoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        self.0.encode(item, buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use http_body_util::BodyExt;
    use prost::Message;
    use prost_types::Duration;
    use tonic::codec::EncodeBody;

    use super::*;

    /// Encodes `msg` as one gRPC message through tonic's body with
    /// `codec`: the frame, and the capacity of the buffer it was cut from
    /// (which a stream keeps for as long as it is open).
    fn encode<C>(mut codec: C, msg: Duration) -> (Vec<u8>, usize)
    where
        C: tonic::codec::Codec<Encode = Duration>,
        C::Encoder: tonic::codec::Encoder<Item = Duration, Error = Status>,
    {
        let source = futures_util::stream::iter([Ok::<_, Status>(msg)]);
        let mut body = Box::pin(EncodeBody::new_client(codec.encoder(), source, None, None));
        let data = body
            .frame()
            .now_or_never()
            .expect("the message is ready")
            .expect("a frame")
            .expect("encoded")
            .into_data()
            .expect("a data frame");
        drop(body);
        let frame = data.to_vec();
        let buffer = bytes::Bytes::try_into_mut(data).expect("the body is gone");
        (frame, buffer.capacity())
    }

    /// A message goes out as the same gRPC frame as through prost's own
    /// codec, from a buffer of its size rather than 8 KiB.
    #[test]
    fn encodes_into_a_buffer_of_the_message_size() {
        let msg = Duration {
            seconds: 300,
            nanos: 7,
        };
        let (ours, ours_capacity) = encode(Codec::<Duration, Duration>::default(), msg);
        let (prost, prost_capacity) = encode(ProstCodec::<Duration, Duration>::default(), msg);
        assert_eq!(ours, prost);
        assert_eq!(ours[0], 0, "not compressed");
        assert_eq!(
            u32::from_be_bytes(ours[1..5].try_into().unwrap()) as usize,
            msg.encoded_len()
        );
        assert_eq!(Duration::decode(&ours[5..]).unwrap(), msg);
        assert_eq!(prost_capacity, 8 * 1024);
        assert_eq!(ours_capacity, 64, "a buffer of {ours_capacity} bytes");
    }
}
