//! Compression with the stock zlib (bundled C library), for one purpose: recomputing the content
//! hash of a cached object, which is taken over the publisher's zlib output (spec §2.4). The
//! publisher uses the stock zlib at its default level; other deflate implementations (such as
//! the one behind `flate2` here) produce different, equally valid streams, so they cannot
//! reproduce the hash.

use std::io;
use std::os::raw::c_int;

use libz_sys as z;

unsafe extern "C" fn zalloc(_: z::voidpf, items: z::uInt, size: z::uInt) -> z::voidpf {
    // SAFETY: plain allocation; zlib checks for null.
    unsafe { libc::calloc(items as usize, size as usize) }
}

unsafe extern "C" fn zfree(_: z::voidpf, p: z::voidpf) {
    // SAFETY: `p` was returned by `zalloc`.
    unsafe { libc::free(p) }
}

/// A deflate stream at the default level that hands its output to a sink.
pub struct StockDeflate {
    strm: Box<z::z_stream>,
    out: Vec<u8>,
}

impl StockDeflate {
    pub fn new() -> io::Result<StockDeflate> {
        let strm = z::z_stream {
            next_in: std::ptr::null_mut(),
            avail_in: 0,
            total_in: 0,
            next_out: std::ptr::null_mut(),
            avail_out: 0,
            total_out: 0,
            msg: std::ptr::null_mut(),
            state: std::ptr::null_mut(),
            zalloc,
            zfree,
            opaque: std::ptr::null_mut(),
            data_type: 0,
            adler: 0,
            reserved: 0,
        };
        let mut strm = Box::new(strm);
        // SAFETY: `strm` is initialised with valid allocator functions; the version string and
        // structure size are the library's own.
        let rc = unsafe {
            z::deflateInit_(
                &mut *strm,
                z::Z_DEFAULT_COMPRESSION,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as c_int,
            )
        };
        if rc != z::Z_OK {
            return Err(io::Error::other(format!("deflateInit failed ({rc})")));
        }
        Ok(StockDeflate {
            strm,
            out: vec![0u8; 64 * 1024],
        })
    }

    fn run(&mut self, input: &[u8], flush: c_int, sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        self.strm.next_in = input.as_ptr() as *mut u8;
        self.strm.avail_in = input.len() as z::uInt;
        loop {
            self.strm.next_out = self.out.as_mut_ptr();
            self.strm.avail_out = self.out.len() as z::uInt;
            // SAFETY: input and output pointers are valid for the given lengths for the
            // duration of the call; zlib does not write through `next_in`.
            let rc = unsafe { z::deflate(&mut *self.strm, flush) };
            let produced = self.out.len() - self.strm.avail_out as usize;
            sink(&self.out[..produced]);
            match rc {
                z::Z_STREAM_END => return Ok(()),
                z::Z_OK | z::Z_BUF_ERROR => {
                    if flush == z::Z_NO_FLUSH && self.strm.avail_in == 0 {
                        return Ok(());
                    }
                    if rc == z::Z_BUF_ERROR && produced == 0 {
                        return Err(io::Error::other("deflate made no progress"));
                    }
                }
                rc => return Err(io::Error::other(format!("deflate failed ({rc})"))),
            }
        }
    }

    /// Compresses `input`, passing output to `sink`.
    pub fn update(&mut self, input: &[u8], sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        self.run(input, z::Z_NO_FLUSH, sink)
    }

    /// Ends the stream.
    pub fn finish(mut self, sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        self.run(&[], z::Z_FINISH, sink)
    }
}

impl Drop for StockDeflate {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by deflateInit_.
        unsafe {
            z::deflateEnd(&mut *self.strm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_flate2() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut z = StockDeflate::new().unwrap();
        let mut out = Vec::new();
        for part in data.chunks(10_000) {
            z.update(part, &mut |b| out.extend_from_slice(b)).unwrap();
        }
        z.finish(&mut |b| out.extend_from_slice(b)).unwrap();
        let mut back = Vec::new();
        io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&out[..]), &mut back).unwrap();
        assert_eq!(back, data);
        // The empty object of every CernVM-FS repository.
        let mut empty = Vec::new();
        StockDeflate::new()
            .unwrap()
            .finish(&mut |b| empty.extend_from_slice(b))
            .unwrap();
        assert_eq!(empty, [0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    }
}
