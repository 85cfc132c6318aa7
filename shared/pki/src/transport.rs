//! SSH transport settings shared by every Portcullis SSH endpoint (tsh, proxy, node).

use std::borrow::Cow;

use russh::cipher;

/// Cipher preference. AES-GCM first: with AES-NI/VAES it costs a fraction of
/// chacha20-poly1305's CPU per byte (measured in docs/benchmarks.md), and every hop of a
/// `tsh ssh` session encrypts twice on the client. chacha20-poly1305 stays available for
/// peers that prefer it; the client's order decides, so OpenSSH clients keep their own.
pub const CIPHERS: &[cipher::Name] = &[
    cipher::AES_256_GCM,
    cipher::AES_128_GCM,
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_CTR,
    cipher::AES_192_CTR,
    cipher::AES_128_CTR,
];

/// russh's default algorithm preferences with [`CIPHERS`] as the cipher order.
pub fn preferred() -> russh::Preferred {
    russh::Preferred { cipher: Cow::Borrowed(CIPHERS), ..russh::Preferred::default() }
}

