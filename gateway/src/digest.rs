//! sha256 for the data path: payload verification, slot writes, handler digests and handler
//! signatures. It is ring's implementation, which picks the CPU's fastest code at run time (SHA
//! extensions, AVX2, SSSE3) as OpenSSL does; the portable `sha2` build reached about half of
//! `openssl dgst` on these gateways (see BENCHMARKS.md). Small inputs (JWS, journal records) keep
//! using `sha2`.

/// An incremental sha256.
#[derive(Clone)]
pub struct Sha256(ring::digest::Context);

impl Sha256 {
    pub fn new() -> Sha256 {
        Sha256(ring::digest::Context::new(&ring::digest::SHA256))
    }

    pub fn update(&mut self, data: impl AsRef<[u8]>) {
        self.0.update(data.as_ref());
    }

    pub fn finalize(self) -> [u8; 32] {
        self.0
            .finish()
            .as_ref()
            .try_into()
            .expect("sha256 is 32 bytes")
    }

    /// The digest of `data` in one call.
    pub fn digest(data: impl AsRef<[u8]>) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(data);
        h.finalize()
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256::new()
    }
}

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha256")
    }
}

#[cfg(test)]
mod tests {
    use super::Sha256;
    use sha2::Digest as _;

    #[test]
    fn matches_the_reference_implementation_at_every_split() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let want: [u8; 32] = sha2::Sha256::digest(&data).into();
        assert_eq!(Sha256::digest(&data), want);
        for split in [0, 1, 63, 64, 65, 4096, 9_999] {
            let mut h = Sha256::new();
            h.update(&data[..split]);
            h.update(&data[split..]);
            assert_eq!(h.finalize(), want, "split at {split}");
        }
        assert_eq!(
            hex::encode(Sha256::digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
