//! The benchmark step: read every payload file in 1 MiB blocks, CRC-32 it (the same portable code
//! the host's native run uses), write the checksums to /work/crc.txt. is-installed answers 901
//! quickly (the handler-call benchmark measures that call).

use sandstep_model::checksum::crc32_update;
use sandstep_sdk::{done, export_handler, Context, Handler, Outcome};
use std::io::{Read, Write};

#[derive(Default)]
struct Bench;

impl Handler for Bench {
    fn is_installed(&mut self, _ctx: &Context) -> Outcome<done::IsInstalled> {
        Ok(done::IsInstalled::NotInstalled.into())
    }

    fn install(&mut self, ctx: &Context) -> Outcome<done::Installed> {
        let mut out = std::fs::File::create(ctx.work_path("crc.txt"))?;
        let mut buf = vec![0u8; 1 << 20];
        for f in ctx.files() {
            let mut src = std::fs::File::open(f.path())?;
            let mut crc = 0;
            loop {
                let n = src.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                crc = crc32_update(crc, &buf[..n]);
            }
            writeln!(out, "{} {crc:08x}", f.name)?;
        }
        Ok(done::Installed::Success.into())
    }

    fn apply(&mut self, _ctx: &Context) -> Outcome<done::Applied> {
        Ok(done::Applied::Success.into())
    }
}

export_handler!(Bench);
