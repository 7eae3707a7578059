//! What CNI plugins answer (results) and network configuration lists.
//! Invariants: no panic; an address read from a result is an address of its family with a
//! prefix length the family allows, and its gateway (when there is one) too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Some((addr, len, gw)) = cni::ipv4(&v) {
        assert!(addr.parse::<std::net::Ipv4Addr>().is_ok(), "{addr}");
        assert!(len <= 32, "{addr}/{len}");
        if let Some(gw) = gw {
            assert!(gw.parse::<std::net::Ipv4Addr>().is_ok(), "gateway {gw:?}");
        }
    }
    if let Some((addr, len, gw)) = cni::ipv6(&v) {
        assert!(addr.parse::<std::net::Ipv6Addr>().is_ok(), "{addr}");
        assert!(len <= 128, "{addr}/{len}");
        if let Some(gw) = gw {
            assert!(gw.parse::<std::net::Ipv6Addr>().is_ok(), "gateway {gw:?}");
        }
    }
    let _ = cni::mac(&v, "eth0");
    let _ = cni::ConfList::parse(&v);
});
