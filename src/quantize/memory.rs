//! What `lab quantize` holds in RAM, and where the rest lives.
//!
//! Held: one decoder layer's weights (f32), one Hessian and the solver's factors, one chunk of
//! calibration sequences and one sequence's intermediates inside the layer. Not held: the
//! calibration hidden states between layers (`ActivationStore::in_file`: a file in the staging
//! folder, read and written one chunk at a time with plain reads/writes, so its pages sit in the
//! kernel's reclaimable page cache, not in this process), the quantized layers (streamed to the
//! output file as each linear is done), and the source checkpoint (mapped only while one layer or
//! tensor is copied out). `ram_bound_bytes` is the bound in numbers; `peak_rss_bytes` what a run
//! really used.

use crate::model::config::ModelConfig;
use crate::{LabError, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bytes of calibration hidden states read from the store at once. One 7B sequence of 2048
/// tokens is 2048 x 4096 x 4 B = 32 MiB, so a chunk is 2 such sequences; tiny models get all
/// their sequences in one chunk. Reads this large cost nothing next to the layer GEMMs
/// (a 7B layer forward of one 2048-token sequence is ~0.8 TFLOP), and the chunk is small next to
/// the Hessian and the solver (24 K^2 B, 2.9 GB at K = 11008).
pub const ACT_CHUNK_BYTES: usize = 64 << 20;

/// Sequences per chunk for sequences of `seq_floats` f32 values: at least 1.
pub fn chunk_sequences(seq_floats: usize) -> usize {
    (ACT_CHUNK_BYTES / (seq_floats * 4).max(1)).max(1)
}

/// The calibration hidden states between layers: `nseq` sequences of `seq` f32 values each.
pub struct ActivationStore {
    nseq: usize,
    seq: usize,
    chunk: usize,
    backing: Backing,
}

enum Backing {
    /// All sequences in RAM (the reference the file-backed store is tested against).
    Memory(Vec<f32>),
    /// A private file (native byte order) and the one chunk read from it.
    File {
        file: File,
        path: PathBuf,
        buf: Vec<f32>,
    },
}

impl ActivationStore {
    pub fn in_memory(nseq: usize, seq: usize) -> ActivationStore {
        ActivationStore {
            nseq,
            seq,
            chunk: chunk_sequences(seq),
            backing: Backing::Memory(vec![0.0; nseq * seq]),
        }
    }

    /// A new file at `path` (which must not exist), sized for every sequence. The caller owns
    /// its removal (it lives in the staging folder, which goes with the run).
    pub fn in_file(path: &Path, nseq: usize, seq: usize) -> Result<ActivationStore> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| LabError::io(path, e))?;
        file.set_len((nseq * seq * 4) as u64)
            .map_err(|e| LabError::io(path, e))?;
        Ok(ActivationStore {
            nseq,
            seq,
            chunk: chunk_sequences(seq),
            backing: Backing::File {
                file,
                path: path.to_path_buf(),
                buf: Vec::new(),
            },
        })
    }

    /// Sequences per chunk (see `ACT_CHUNK_BYTES`).
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Store sequence `i`.
    pub fn put(&mut self, i: usize, x: &[f32]) -> Result<()> {
        debug_assert_eq!(x.len(), self.seq);
        let seq = self.seq;
        match &mut self.backing {
            Backing::Memory(v) => v[i * seq..(i + 1) * seq].copy_from_slice(x),
            Backing::File { file, path, .. } => write_at(file, path, i * seq, x)?,
        }
        Ok(())
    }

    /// Call `f(i, sequence)` for every sequence, in order, reading one chunk at a time.
    pub fn for_each(&mut self, mut f: impl FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
        self.map(|i, x| f(i, x).map(|()| None))
    }

    /// Replace every sequence by `f(i, sequence)`, in order, one chunk at a time. Each output
    /// depends only on its own input (attention stays inside a sequence), so in place is exact.
    pub fn update(&mut self, mut f: impl FnMut(usize, &[f32]) -> Vec<f32>) -> Result<()> {
        self.map(|i, x| Ok(Some(f(i, x))))
    }

    /// The chunk loop behind `for_each` (f returns None: nothing written back) and `update`.
    fn map(&mut self, mut f: impl FnMut(usize, &[f32]) -> Result<Option<Vec<f32>>>) -> Result<()> {
        let (seq, chunk) = (self.seq, self.chunk);
        let mut first = 0;
        while first < self.nseq {
            let count = chunk.min(self.nseq - first);
            let range = first * seq..(first + count) * seq;
            match &mut self.backing {
                Backing::Memory(v) => {
                    for (j, x) in v[range].chunks_exact_mut(seq).enumerate() {
                        if let Some(y) = f(first + j, x)? {
                            x.copy_from_slice(&y);
                        }
                    }
                }
                Backing::File { file, path, buf } => {
                    buf.resize(count * seq, 0.0);
                    read_at(file, path, first * seq, buf)?;
                    let mut dirty = false;
                    for (j, x) in buf.chunks_exact_mut(seq).enumerate() {
                        if let Some(y) = f(first + j, x)? {
                            x.copy_from_slice(&y);
                            dirty = true;
                        }
                    }
                    if dirty {
                        write_at(file, path, first * seq, buf)?;
                    }
                }
            }
            first += count;
        }
        Ok(())
    }
}

fn read_at(file: &mut File, path: &Path, at: usize, buf: &mut [f32]) -> Result<()> {
    file.seek(SeekFrom::Start((at * 4) as u64))
        .and_then(|_| file.read_exact(bytemuck::cast_slice_mut(buf)))
        .map_err(|e| LabError::io(path, e))
}

fn write_at(file: &mut File, path: &Path, at: usize, x: &[f32]) -> Result<()> {
    file.seek(SeekFrom::Start((at * 4) as u64))
        .and_then(|_| file.write_all(bytemuck::cast_slice(x)))
        .map_err(|e| LabError::io(path, e))
}

/// Hand memory the allocator keeps after `free` back to the system. glibc's malloc serves
/// blocks under its mmap threshold (which grows to 32 MiB as large blocks are freed) from heaps
/// it rarely shrinks, so the freed intermediates of one linear (f64 error matrices, dequantized
/// weights: 8 K N bytes each) would stay resident beside the next linear's solver.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim only returns free pages of glibc's own heaps to the kernel; it
        // takes no pointers and is thread-safe (it locks each arena).
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Peak resident set (VmHWM of /proc/self/status) in bytes; `None` where there is no procfs.
pub fn peak_rss_bytes() -> Option<u64> {
    vm_hwm_bytes(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// VmHWM of a /proc/<pid>/status text, in bytes (the kernel writes it in "kB", units of 1024).
fn vm_hwm_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The RAM a quantization run's large buffers need at most, in bytes, from the code's own
/// allocations (h = hidden, i = intermediate, kv = KV width, s = seqlen, v = vocab,
/// C = min(nsamples, `chunk_sequences(s * h)`); all f32 unless said):
///
/// - layer weights, held through the layer: 4 (2 h^2 + 2 h kv + 3 h i)
/// - one chunk of hidden states: 4 C s h
/// - then the largest of
///   - a stage's Hessian sum (f32 K^2) while one sequence runs through the layer: 4 K^2 +
///     4 max(s (2h + 2kv) + s^2, 3 s h, s (2h + 2i))  (`layer_pass`, intermediates dropped early)
///   - solving one linear [K, N] against that sum (read in place as H: `Hessian::scaled`), 4 K^2
///     plus the larger of the solver (the f64 Cholesky factor and U in f32: 12 K^2, one block of
///     L'^-1's columns: 2048 K, and its copies of W: ~6 K N) and the error measurement
///     (`hessian_relative_error`: W, D and the dequantized W in f64, 24 K N, the packed layers
///     ~1 K N, and its row blocks: 2048 (K + N))
///   - copying the unquantized tensors before the pass: the largest one (the embedding) as f32,
///     f16 and bytes: 8 v h
///
/// K is h for q/k/v/o/gate/up and i for down. 7B at s = 2048: 0.81 GB weights + 0.07 GB chunk +
/// 2.23 GB (solving down_proj, K = 11008: 0.48 sum + 1.45 factor and U + 0.27 W copies + 0.02
/// block) = 3.11 GB. Until 2026-11-28 the solver also held an f64 copy of H and the whole f64
/// L'^-1 (4.06 GB in all); before streaming, a run also held every sequence's hidden states
/// (4 nsamples s h: 4.3 GB at 128 sequences), every quantized layer and the serialized output
/// file (~3.9 GB each), and the mapped source (13.5 GB) as it was read.
pub fn ram_bound_bytes(cfg: &ModelConfig, seqlen: usize, nsamples: usize) -> u64 {
    let (h, i, s, v) = (
        cfg.hidden_size as u64,
        cfg.intermediate_size as u64,
        seqlen as u64,
        cfg.vocab_size as u64,
    );
    let kv = (cfg.num_key_value_heads * cfg.head_dim()) as u64;
    let weights = 4 * (2 * h * h + 2 * h * kv + 3 * h * i);
    let c = chunk_sequences(seqlen * cfg.hidden_size).min(nsamples) as u64;
    let chunk = 4 * c * s * h;
    let forward = 4
        * (s * (2 * h + 2 * kv) + s * s)
            .max(3 * s * h)
            .max(s * (2 * h + 2 * i));
    let per_linear = cfg
        .layer_linears()
        .iter()
        .map(|&(_, k, n)| {
            let (k, n) = (k as u64, n as u64);
            let accumulate = 4 * k * k + forward;
            let solver = 12 * k * k + 2048 * k + 6 * k * n;
            let error = 25 * k * n + 2048 * (k + n);
            let solve = 4 * k * k + solver.max(error);
            accumulate.max(solve)
        })
        .max()
        .unwrap_or(0);
    weights + chunk + per_linear.max(8 * v * h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_reads_back_what_was_written_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        // Sequences of ACT_CHUNK_BYTES / 3 bytes: 3 per chunk, 7 sequences = 3 chunks.
        let seq = ACT_CHUNK_BYTES / 12;
        assert_eq!(chunk_sequences(seq), 3);
        let mut f = ActivationStore::in_file(&dir.path().join("a"), 7, seq).unwrap();
        let mut m = ActivationStore::in_memory(7, seq);
        for i in 0..7 {
            let x: Vec<f32> = (0..seq).map(|j| (i * seq + j) as f32 * 0.5).collect();
            f.put(i, &x).unwrap();
            m.put(i, &x).unwrap();
        }
        let step =
            |i: usize, x: &[f32]| -> Vec<f32> { x.iter().map(|v| v * 3.0 + i as f32).collect() };
        f.update(step).unwrap();
        m.update(step).unwrap();
        let (mut seen_f, mut seen_m) = (Vec::new(), Vec::new());
        f.for_each(|i, x| {
            seen_f.push((i, x[0], x[seq - 1]));
            Ok(())
        })
        .unwrap();
        m.for_each(|i, x| {
            seen_m.push((i, x[0], x[seq - 1]));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen_f, seen_m);
        assert_eq!(seen_f.len(), 7);
        let last = ((6 * seq + seq - 1) as f32 * 0.5) * 3.0 + 6.0;
        assert_eq!(seen_f[6], (6, (6 * seq) as f32 * 0.5 * 3.0 + 6.0, last));
        // An error from the callback stops the pass and comes back.
        let e = f.for_each(|i, _| {
            if i == 4 {
                Err(LabError::invalid("x", "stop"))
            } else {
                Ok(())
            }
        });
        assert!(e.unwrap_err().to_string().contains("stop"));
    }

    #[test]
    fn bound_of_a_7b_layer_is_a_few_gigabytes() {
        let cfg = crate::model::config::ModelConfig::preset("vicuna-7b").unwrap();
        let b = ram_bound_bytes(&cfg, 2048, 128) as f64 / 1e9;
        // The doc's arithmetic: 0.81 + 0.07 + 2.23 GB, less than the 4.3 GB of hidden states
        // (128 x 2048 tokens) that the whole-run buffer held alone.
        assert!((3.10..3.12).contains(&b), "{b} GB");
    }

    #[test]
    fn peak_rss_is_read_from_vm_hwm_in_kib() {
        let status = "Name:\tlab\nVmPeak:\t  999999 kB\nVmHWM:\t   12345 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(vm_hwm_bytes(status), Some(12345 * 1024));
        assert_eq!(vm_hwm_bytes("Name:\tlab\n"), None);
        assert!(peak_rss_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn the_hidden_states_chunk_counts_only_the_sequences_there_are() {
        let cfg = crate::model::config::ModelConfig::preset("vicuna-7b").unwrap();
        // seqlen 128: a chunk holds 64 MiB / (128 x 4096 x 4 B) = 32 sequences. Below that,
        // each sequence adds its 128 x 4096 f32 to the bound; past it, the chunk is full.
        assert_eq!(chunk_sequences(128 * 4096), 32);
        let b = |n| ram_bound_bytes(&cfg, 128, n);
        assert_eq!(b(5) - b(4), 4 * 128 * 4096);
        assert_eq!(b(32) - b(1), 31 * 4 * 128 * 4096);
        assert_eq!(b(128), b(32));
    }
}
