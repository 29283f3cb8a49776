//! MQTT packets into the broker's codec: rumqttd's `V4` and `V5` `Protocol::read_mut`, as a
//! connection's read loop calls it, on a buffer holding one or more packets.

use bytes::BytesMut;
use rand::rngs::SmallRng;
use rand::Rng;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{Packet, Protocol};

use crate::driver::Surface;
use crate::mqtt::{self, Version};
use crate::mutate::{mutate, random_bytes};

/// The largest packet iotmon's broker accepts by default (`broker.max_packet_size`).
pub const MAX_PACKET_SIZE: usize = 16 * 1024;

/// The codec of one protocol version.
#[derive(Debug)]
pub struct Codec {
    version: Version,
}

impl Codec {
    pub fn new(version: Version) -> Self {
        Codec { version }
    }

    fn read(&self, buffer: &mut BytesMut) -> Result<Packet, rumqttd::protocol::Error> {
        match self.version {
            Version::V4 => V4.read_mut(buffer, MAX_PACKET_SIZE),
            Version::V5 => V5.read_mut(buffer, MAX_PACKET_SIZE),
        }
    }

    fn write(
        &self,
        packet: Packet,
        buffer: &mut BytesMut,
    ) -> Result<usize, rumqttd::protocol::Error> {
        match self.version {
            Version::V4 => V4.write(packet, buffer),
            Version::V5 => V5.write(packet, buffer),
        }
    }
}

impl Surface for Codec {
    fn name(&self) -> &'static str {
        match self.version {
            Version::V4 => "mqtt-v4",
            Version::V5 => "mqtt-v5",
        }
    }

    fn generate(&mut self, rng: &mut SmallRng, out: &mut Vec<u8>) {
        if rng.random_ratio(1, 20) {
            let count = rng.random_range(0..64);
            out.extend(random_bytes(rng, count));
            return;
        }
        for _ in 0..rng.random_range(1..=3) {
            mqtt::any_packet(rng, self.version, out);
        }
        if rng.random_ratio(9, 10) {
            mutate(rng, out, &mqtt::DICTIONARY);
        }
    }

    /// Reads packets until the buffer is used up or an error. Each packet read is written
    /// back with the same codec and must read back the same.
    fn check(&mut self, input: &[u8]) -> Result<(), String> {
        let mut buffer = BytesMut::from(input);
        while let Ok(packet) = self.read(&mut buffer) {
            let mut written = BytesMut::new();
            if self.write(packet.clone(), &mut written).is_err() {
                continue;
            }
            let again = self.read(&mut written);
            if again.as_ref() != Ok(&packet) {
                return Err(format!("read {packet:?}, wrote it, read back {again:?}"));
            }
        }
        Ok(())
    }
}
