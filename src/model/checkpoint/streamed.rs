//! A safetensors file laid out before its data exists: the header (names, dtypes, shapes,
//! offsets) is written first, then each tensor's bytes at its offset whenever they are ready, in
//! any order, so a writer never holds more than one tensor. The layout is the one
//! `safetensors::serialize` gives the same tensors (decreasing dtype alignment, then name; the
//! JSON header padded with spaces to a multiple of 8 bytes), so the finished file is
//! byte-identical to serializing everything at once.

use crate::{LabError, Result};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

struct Slot {
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute file offset of the first byte.
    start: u64,
    len: usize,
    written: bool,
}

pub struct StreamedSafetensors {
    path: PathBuf,
    file: File,
    slots: HashMap<String, Slot>,
}

impl StreamedSafetensors {
    /// Create `path` (which must not exist) with the header for `tensors` (name, dtype, shape)
    /// and `meta` as `__metadata__`; the data section is allocated (sparse) and filled by `write`.
    pub fn create(
        path: &Path,
        mut tensors: Vec<(String, Dtype, Vec<usize>)>,
        meta: HashMap<String, String>,
    ) -> Result<StreamedSafetensors> {
        let bad = |r: String| LabError::bad_checkpoint(path, r);
        tensors.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut infos = Vec::with_capacity(tensors.len());
        let mut offset = 0usize;
        for (name, dtype, shape) in &tensors {
            let bits = shape
                .iter()
                .try_fold(dtype.bitsize(), |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad(format!("tensor '{name}': shape {shape:?} overflows")))?;
            if bits % 8 != 0 {
                return Err(bad(format!(
                    "tensor '{name}': {bits} bits is not a whole number of bytes"
                )));
            }
            let info = TensorInfo {
                dtype: *dtype,
                shape: shape.clone(),
                data_offsets: (offset, offset + bits / 8),
            };
            offset += bits / 8;
            infos.push((name.clone(), info));
        }
        let header = Metadata::new(Some(meta), infos.clone())
            .map_err(|e| bad(format!("safetensors header: {e}")))?;
        let mut hbytes = serde_json::to_string(&header)
            .map_err(|e| bad(format!("safetensors header: {e}")))?
            .into_bytes();
        hbytes.resize(hbytes.len().next_multiple_of(8), b' ');
        let data_start = 8 + hbytes.len() as u64;

        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| LabError::io(path, e))?;
        file.write_all(&(hbytes.len() as u64).to_le_bytes())
            .and_then(|()| file.write_all(&hbytes))
            .and_then(|()| file.set_len(data_start + offset as u64))
            .map_err(|e| LabError::io(path, e))?;
        let mut slots = HashMap::with_capacity(infos.len());
        for (name, info) in infos {
            let (a, b) = info.data_offsets;
            let slot = Slot {
                dtype: info.dtype,
                shape: info.shape,
                start: data_start + a as u64,
                len: b - a,
                written: false,
            };
            if slots.insert(name.clone(), slot).is_some() {
                return Err(bad(format!("tensor '{name}' planned twice")));
            }
        }
        Ok(StreamedSafetensors {
            path: path.to_path_buf(),
            file,
            slots,
        })
    }

    /// Write one planned tensor; its dtype, shape and byte count must be the planned ones.
    pub fn write(&mut self, name: &str, dtype: Dtype, shape: &[usize], bytes: &[u8]) -> Result<()> {
        let bad = |r: String| LabError::bad_checkpoint(&self.path, r);
        let Some(slot) = self.slots.get_mut(name) else {
            return Err(bad(format!("tensor '{name}' is not in the planned header")));
        };
        if slot.written {
            return Err(bad(format!("tensor '{name}' written twice")));
        }
        if slot.dtype != dtype || slot.shape != shape || slot.len != bytes.len() {
            return Err(bad(format!(
                "tensor '{name}': {dtype:?} {shape:?} ({} bytes), but the header says {:?} {:?} ({} bytes)",
                bytes.len(),
                slot.dtype,
                slot.shape,
                slot.len
            )));
        }
        self.file
            .seek(SeekFrom::Start(slot.start))
            .and_then(|_| self.file.write_all(bytes))
            .map_err(|e| LabError::io(&self.path, e))?;
        slot.written = true;
        Ok(())
    }

    /// Every planned tensor must have been written; the file is flushed to disk.
    pub fn finish(self) -> Result<()> {
        let mut missing: Vec<&String> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.written)
            .map(|(n, _)| n)
            .collect();
        missing.sort();
        if let Some(first) = missing.first() {
            return Err(LabError::bad_checkpoint(
                &self.path,
                format!(
                    "{} planned tensor(s) never written, e.g. '{first}'",
                    missing.len()
                ),
            ));
        }
        self.file
            .sync_all()
            .map_err(|e| LabError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    #[test]
    fn streamed_file_is_byte_identical_to_serialize_in_any_write_order() {
        let t: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
            ("b.scales", Dtype::F16, vec![2, 3], (0..12).collect()),
            ("a.qweight", Dtype::I32, vec![1, 3], (100..112).collect()),
            ("c", Dtype::F16, vec![5], (50..60).collect()),
            ("a.g_idx", Dtype::I32, vec![2], (7..15).collect()),
        ];
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let views: Vec<(String, TensorView)> = t
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        let want = safetensors::serialize(views, Some(meta.clone())).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let plan = t
            .iter()
            .map(|(n, d, s, _)| (n.to_string(), *d, s.clone()))
            .collect();
        let mut f = StreamedSafetensors::create(&path, plan, meta).unwrap();
        for (n, d, s, b) in t.iter().rev() {
            f.write(n, *d, s, b).unwrap();
        }
        // A second write of a tensor is refused.
        assert!(f.write("c", Dtype::F16, &[5], &t[2].3).is_err());
        f.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), want);
        assert!(StreamedSafetensors::create(&path, Vec::new(), HashMap::new()).is_err());
    }

    #[test]
    fn unwritten_or_mismatched_tensors_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let plan = vec![
            ("x".to_string(), Dtype::I32, vec![2]),
            ("y".to_string(), Dtype::F16, vec![2]),
        ];
        let mut f = StreamedSafetensors::create(&path, plan, HashMap::new()).unwrap();
        let e = f.write("x", Dtype::I32, &[3], &[0; 12]).unwrap_err();
        assert!(e.to_string().contains("header says"), "{e}");
        // The planned byte count is not enough: the same 8 bytes as another dtype or shape would
        // sit under a header that says something else about them.
        for (dtype, shape) in [(Dtype::F32, vec![2]), (Dtype::I32, vec![1, 2])] {
            let e = f
                .write("x", dtype, &shape, &[0; 8])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("m.safetensors")
                    && e.contains(&format!("tensor 'x': {dtype:?} {shape:?} (8 bytes)"))
                    && e.contains("header says I32 [2] (8 bytes)"),
                "{e}"
            );
        }
        assert!(f.write("z", Dtype::I32, &[2], &[0; 8]).is_err());
        f.write("x", Dtype::I32, &[2], &[1; 8]).unwrap();
        let e = f.finish().unwrap_err().to_string();
        assert!(e.contains("never written") && e.contains("'y'"), "{e}");
    }
}
