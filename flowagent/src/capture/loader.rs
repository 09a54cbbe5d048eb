//! Loads the eBPF object with this run's settings: the sampling threshold in
//! every CPU's sampler (and the read-only global CPUs beyond them use), the
//! flow maps' size; then verifies the programs the mode needs.

use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, Xdp},
};
use flowagent_common::{SAMPLER_CPUS, Sampler, names};

use super::Error;
use crate::config::{Config, Mode};

/// The object built from flowagent-ebpf by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowagent"));

/// The eBPF programs' `SAMPLE_THRESHOLD` for 1-in-`rate` sampling: a packet
/// is kept when a uniform random `u32` is below it, so the probability is
/// `threshold / 2^32`, within 2^-32 of `1 / rate`. 0 keeps every packet.
pub fn sample_threshold(rate: u32) -> u32 {
    if rate <= 1 {
        0
    } else {
        ((1u64 << 32) / rate as u64) as u32
    }
}

/// Loads the object for 1-in-`sampling` sampling and flow maps of
/// `max_flows` entries: maps created, and the clock program the drain runs
/// loaded; the flow programs are left to the caller.
pub fn load_object(sampling: u32, max_flows: u32) -> Result<Ebpf, Error> {
    let globals = Globals::new(sampling);
    let mut ebpf = configure(&globals, max_flows)
        .load(EBPF_OBJECT)
        .map_err(Error::Load)?;
    program::<Xdp>(&mut ebpf, names::PROG_CLOCK)?
        .load()
        .map_err(|source| Error::Program {
            name: names::PROG_CLOCK,
            source,
        })?;
    Ok(ebpf)
}

/// The values the loader writes into the object's globals for one sampling
/// rate: every CPU's sampler and the threshold of CPUs beyond them.
pub struct Globals {
    samplers: Box<[Sampler; SAMPLER_CPUS]>,
    threshold: u32,
}

impl Globals {
    /// The globals for 1-in-`sampling` sampling.
    pub fn new(sampling: u32) -> Self {
        let threshold = sample_threshold(sampling);
        Globals {
            samplers: Box::new([Sampler::new(threshold); SAMPLER_CPUS]),
            threshold,
        }
    }
}

/// A loader with these globals and flow maps of `max_flows` entries.
pub fn configure(globals: &Globals, max_flows: u32) -> EbpfLoader<'_> {
    let mut loader = EbpfLoader::new();
    loader.override_global(names::SAMPLERS, &*globals.samplers, true);
    loader.override_global(names::SAMPLE_THRESHOLD, &globals.threshold, true);
    for name in names::FLOWS_V4.iter().chain(names::FLOWS_V6.iter()) {
        loader.map_max_entries(name, max_flows);
    }
    loader
}

/// Loads the object and the programs `config.mode` uses.
pub fn load(config: &Config) -> Result<Ebpf, Error> {
    let mut ebpf = load_object(config.sampling, config.max_flows)?;
    if config.mode == Mode::Tc {
        for name in [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS] {
            program::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .map_err(|source| Error::Program { name, source })?;
        }
    } else {
        program::<Xdp>(&mut ebpf, names::PROG_XDP)?
            .load()
            .map_err(|source| Error::Program {
                name: names::PROG_XDP,
                source,
            })?;
    }
    Ok(ebpf)
}

/// The program `name` as type `P`.
pub fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, Error>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(Error::Missing(name))?;
    prog.try_into()
        .map_err(|source| Error::Program { name, source })
}

#[cfg(test)]
mod tests {
    use super::sample_threshold;

    #[test]
    fn thresholds() {
        assert_eq!(sample_threshold(1), 0);
        assert_eq!(sample_threshold(2), 1 << 31);
        assert_eq!(sample_threshold(100), 42_949_672);
        assert_eq!(sample_threshold(1 << 24), 256);
    }
}
