//! Writes the demo capture `tests/data/demo.pcap`: three clients open HTTP connections to the
//! VIP 10.0.0.1:80 (NAT to three real servers), the servers answer, plus an ARP request, a ping of
//! the VIP and a stray ACK. Run: `cargo run -p xvsd --example demo_capture -- tests/data/demo.pcap`.

use std::time::Duration;

use etherparse::PacketBuilder;
use pcap_file::pcap::{PcapPacket, PcapWriter};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x1b];
pub const RS_MACS: [[u8; 6]; 3] = [
    [0x02, 0, 0, 0, 0xaa, 1],
    [0x02, 0, 0, 0, 0xaa, 2],
    [0x02, 0, 0, 0, 0xaa, 3],
];

fn tcp(
    src_mac: [u8; 6],
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    flags: &str,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, LB_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1, 64240);
    let b = match flags {
        "S" => b.syn(),
        "SA" => b.syn().ack(2),
        "FA" => b.fin().ack(2),
        _ => b.ack(2),
    };
    let mut v = Vec::new();
    b.write(&mut v, payload)
        .expect("writing to a Vec cannot fail");
    v
}

/// The demo's frames in order.
pub fn demo_frames() -> Vec<Vec<u8>> {
    let vip = [10, 0, 0, 1];
    let mut frames = Vec::new();
    // Three clients; rr sends each to the next real server; each server answers.
    for c in 0..3u8 {
        let client = [10, 9, 0, 10 + c];
        let sport = 40000 + u16::from(c);
        let rs = [192, 168, 10, 3 - c]; // rr walks the newest-added server first
        frames.push(tcp(CLIENT_MAC, client, sport, vip, 80, "S", b""));
        frames.push(tcp(
            RS_MACS[usize::from(2 - c)],
            rs,
            80,
            client,
            sport,
            "SA",
            b"",
        ));
        frames.push(tcp(
            CLIENT_MAC,
            client,
            sport,
            vip,
            80,
            "A",
            b"GET / HTTP/1.0\r\n\r\n",
        ));
        let body = format!(
            "HTTP/1.0 200 OK\r\n\r\nserved by {}.{}.{}.{}\n",
            rs[0], rs[1], rs[2], rs[3]
        );
        frames.push(tcp(
            RS_MACS[usize::from(2 - c)],
            rs,
            80,
            client,
            sport,
            "FA",
            body.as_bytes(),
        ));
        frames.push(tcp(CLIENT_MAC, client, sport, vip, 80, "FA", b""));
    }
    // ARP who-has 10.0.0.1: the kernel's business.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[10, 9, 0, 10, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
    frames.push(arp);
    // A ping of the VIP: passed to the kernel.
    let mut ping = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4([10, 9, 0, 10], vip, 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut ping, b"ping")
        .expect("writing to a Vec cannot fail");
    frames.push(ping);
    // An ACK that belongs to no connection: dropped and counted.
    frames.push(tcp(
        CLIENT_MAC,
        [10, 9, 0, 99],
        41000,
        vip,
        80,
        "A",
        b"stray",
    ));
    frames
}

/// Write frames as an Ethernet pcap, 1 ms apart.
pub fn write_pcap(path: &str, frames: &[Vec<u8>]) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut w = PcapWriter::new(file).map_err(std::io::Error::other)?;
    for (i, f) in frames.iter().enumerate() {
        let ts = Duration::from_millis(1_700_000_000_000 + i as u64);
        w.write_packet(&PcapPacket::new(ts, f.len() as u32, f))
            .map_err(std::io::Error::other)?;
    }
    Ok(())
}

#[allow(dead_code)]
fn main() -> std::io::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tests/data/demo.pcap".into());
    write_pcap(&path, &demo_frames())
}
