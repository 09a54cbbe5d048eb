//! Library target so that `flowagent` can name this crate as a build
//! dependency (cargo rebuilds the agent when it changes); the programs are in
//! the `flowagent` binary target, built for bpfel-unknown-none by aya-build.
#![no_std]
