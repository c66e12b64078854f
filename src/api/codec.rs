//! The protobuf codec of every service: prost's, except that a message that does not
//! decode is the sender's mistake. tonic's codec answers INTERNAL for a request body
//! that is not the message it should be; a client can do nothing with that, so the hub
//! answers INVALID_ARGUMENT (reason `UNDECODABLE_REQUEST`).
//!
//! The generated clients use the same codec, so a response that does not decode reads
//! as INVALID_ARGUMENT to them too; the hub's own responses always decode.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use crate::domain::error::{Error, FieldViolation};

/// Named in `build.rs` as the codec of every generated service and client.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(ProstCodec::<T, U>::raw_decoder(BufferSettings::default()))
    }
}

/// prost's decoder with the failure reclassified.
#[derive(Debug, Clone)]
pub struct Decoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            let violation = FieldViolation::new(
                "",
                format!(
                    "the message is not a valid {}: {}",
                    std::any::type_name::<U>()
                        .rsplit("::")
                        .next()
                        .unwrap_or("message"),
                    status.message()
                ),
            )
            .because("UNDECODABLE_REQUEST");
            Error::from(violation).into()
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
