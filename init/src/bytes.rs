//! Bounds-checked reads of fixed-width fields from wire buffers (netlink, DHCP, SNTP, disk
//! labels): a short buffer gives `None`, never a panic in PID 1.

use std::net::Ipv4Addr;

/// The `N` bytes at offset `at`, if the buffer holds them.
pub fn array<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

pub fn u16_ne(b: &[u8], at: usize) -> Option<u16> {
    array(b, at).map(u16::from_ne_bytes)
}

pub fn u32_ne(b: &[u8], at: usize) -> Option<u32> {
    array(b, at).map(u32::from_ne_bytes)
}

pub fn u16_be(b: &[u8], at: usize) -> Option<u16> {
    array(b, at).map(u16::from_be_bytes)
}

pub fn u32_be(b: &[u8], at: usize) -> Option<u32> {
    array(b, at).map(u32::from_be_bytes)
}

pub fn u16_le(b: &[u8], at: usize) -> Option<u16> {
    array(b, at).map(u16::from_le_bytes)
}

pub fn u32_le(b: &[u8], at: usize) -> Option<u32> {
    array(b, at).map(u32::from_le_bytes)
}

pub fn u64_le(b: &[u8], at: usize) -> Option<u64> {
    array(b, at).map(u64::from_le_bytes)
}

/// An IPv4 address in network order at `at`.
pub fn ipv4(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    array::<4>(b, at).map(Ipv4Addr::from)
}

/// The bytes from `at` to the end; empty when `at` is past the end.
pub fn tail(b: &[u8], at: usize) -> &[u8] {
    b.get(at..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_buffers_give_none() {
        let b = [1u8, 2, 3, 4, 5];
        assert_eq!(u32_be(&b, 1), Some(0x0203_0405));
        assert_eq!(u32_be(&b, 2), None);
        assert_eq!(u16_ne(&b, usize::MAX), None);
        assert_eq!(ipv4(&b, 0), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(tail(&b, 4), &[5]);
        assert!(tail(&b, 9).is_empty());
    }
}
