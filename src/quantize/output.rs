//! The output side of `lab quantize`: a staging folder beside `--out` made before any work (so an
//! unwritable destination fails at once), the checkpoint written there (weights streamed in as
//! each linear is quantized, then configs with the settings used and the source's tokenizer
//! files), then renamed into place. An error drops the staging folder with everything in it;
//! nothing partial ever sits at `--out`.
//!
//! The weights are one `model.safetensors`, as AutoGPTQ and transformers write GPTQ models and
//! as every GPTQ loader reads them (including the single-file ones: ExLlama, GPTQ-for-LLaMa). Its
//! header is laid out before the pass from the shapes the config and group size fix; the file is
//! byte-identical to the in-memory writer's (`write_model`, kept as the reference).

use super::pipeline::{Method, QuantizeOptions, QuantizedModel};
use super::source::{dense_names, dense_tensor, dense_tensors};
use crate::gptq::{group_rows, GptqParams, QuantLinear, ZeroFormat};
use crate::model::checkpoint::{
    config_files, encode_dense, encode_linear, linear_specs, write_gptq_checkpoint, Checkpoint,
    QuantInfo, StreamedSafetensors,
};
use crate::{LabError, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Files copied beside the weights when the source has them (tokenizer and generation settings).
const SIDE_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

fn quant_info(p: &GptqParams, format: ZeroFormat) -> QuantInfo {
    QuantInfo {
        bits: 4,
        group_size: p.group_size,
        desc_act: p.act_order,
        sym: p.sym,
        static_groups: p.static_groups,
        format,
        inferred: Vec::new(),
        whole_word_v1: None,
    }
}

fn source_config(ckpt_dir: &Path) -> Result<serde_json::Value> {
    crate::util::read_json(&ckpt_dir.join("config.json"))
}

/// The settings used and the source's tokenizer files, beside the weights and configs.
fn finish_folder(ckpt_dir: &Path, dir: &Path, p: &GptqParams, method: Method) -> Result<()> {
    record_settings(dir, p, method)?;
    for f in SIDE_FILES {
        let src = ckpt_dir.join(f);
        if src.is_file() {
            std::fs::copy(&src, dir.join(f)).map_err(|e| LabError::io(&src, e))?;
        }
    }
    Ok(())
}

/// Write `m` as a complete checkpoint folder `dir` (which must not exist) from memory: weights,
/// configs with the settings used, and the source's tokenizer files. `lab quantize` streams
/// instead (`StreamedModel`); this is the reference its output is tested against.
pub fn write_model(
    ckpt: &Checkpoint,
    m: &QuantizedModel,
    o: &QuantizeOptions,
    dir: &Path,
) -> Result<()> {
    let dense = dense_tensors(ckpt, &ckpt.config)?;
    let info = quant_info(&m.params, o.format);
    let cfg_json = source_config(&ckpt.dir)?;
    write_gptq_checkpoint(dir, &cfg_json, &m.layers, &dense, o.format, &info)?;
    finish_folder(&ckpt.dir, dir, &m.params, o.method)
}

/// A checkpoint folder written while the model is quantized: `create` lays out
/// model.safetensors for every tensor and copies the unquantized ones (one at a time), `linear`
/// writes each quantized linear as it comes, `finish` checks that all came and adds the configs
/// and tokenizer files.
pub(crate) struct StreamedModel {
    ckpt_dir: PathBuf,
    dir: PathBuf,
    weights: StreamedSafetensors,
    params: GptqParams,
    info: QuantInfo,
    cfg_json: serde_json::Value,
}

impl StreamedModel {
    /// `dir` must not exist. The source at `checkpoint` is opened here and closed on return.
    pub fn create(
        checkpoint: &Path,
        params: &GptqParams,
        format: ZeroFormat,
        dir: &Path,
    ) -> Result<StreamedModel> {
        let ckpt = Checkpoint::open(checkpoint)?;
        let cfg = &ckpt.config;
        let cfg_json = source_config(&ckpt.dir)?;
        if !cfg_json.is_object() {
            return Err(LabError::bad_checkpoint(
                ckpt.dir.join("config.json"),
                "is not a JSON object",
            ));
        }
        let names = dense_names(&ckpt, cfg);
        let mut plan = Vec::new();
        for name in &names {
            let (_, shape) = ckpt.tensor_meta(name).ok_or_else(|| {
                LabError::bad_checkpoint(&ckpt.dir, format!("missing tensor '{name}'"))
            })?;
            plan.push((name.clone(), safetensors::Dtype::F16, shape));
        }
        for i in 0..cfg.num_hidden_layers {
            for (name, k, n) in cfg.layer_linears() {
                let g = group_rows(params.group_size, k)
                    .map_err(|r| LabError::invalid("--group", format!("{r} ({name})")))?;
                plan.extend(linear_specs(
                    &format!("model.layers.{i}.{name}"),
                    k,
                    n,
                    k.div_ceil(g),
                ));
            }
        }
        std::fs::create_dir(dir).map_err(|e| LabError::io(dir, e))?;
        // transformers refuses safetensors files whose metadata lacks format = "pt".
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let mut weights = StreamedSafetensors::create(&dir.join("model.safetensors"), plan, meta)?;
        for name in &names {
            let (name, data, shape) = dense_tensor(&ckpt, name)?;
            let (dt, shape, bytes) = encode_dense(dir, &name, &data, &shape)?;
            weights.write(&name, dt, &shape, &bytes)?;
        }
        Ok(StreamedModel {
            ckpt_dir: ckpt.dir.clone(),
            dir: dir.to_path_buf(),
            weights,
            params: params.clone(),
            info: quant_info(params, format),
            cfg_json,
        })
    }

    /// Write one quantized linear (state-dict prefix `prefix`).
    pub fn linear(&mut self, prefix: &str, l: &QuantLinear) -> Result<()> {
        for (name, dt, shape, bytes) in
            encode_linear(&self.dir, prefix, l, self.info.format, &self.info)?
        {
            self.weights.write(&name, dt, &shape, &bytes)?;
        }
        Ok(())
    }

    /// Every tensor must have been written; then configs, settings and tokenizer files.
    pub fn finish(self, method: Method) -> Result<()> {
        self.weights.finish()?;
        write_configs(&self.dir, &self.cfg_json, &self.info)?;
        finish_folder(&self.ckpt_dir, &self.dir, &self.params, method)
    }
}

/// quantize_config.json and config.json (`cfg_json` + its quantization_config) into `dir`.
pub(crate) fn write_configs(
    dir: &Path,
    cfg_json: &serde_json::Value,
    info: &QuantInfo,
) -> Result<()> {
    let cfg_obj = cfg_json.as_object().cloned().unwrap_or_default();
    for (name, bytes) in config_files(&cfg_obj, info.format, info) {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| LabError::io(&path, e))?;
    }
    Ok(())
}

/// Staging folders are `<parent>/.lab-checkpoint-<out name>.<6 random>`; the name ties one to its
/// --out, so a later run for the same --out can find one a killed run left behind.
const STAGING_PREFIX: &str = ".lab-checkpoint-";
/// Inside each staging folder: a file its run holds an exclusive lock on (flock) for as long as
/// it lives. The kernel drops the lock when the process ends, however it ends, so a lock that can
/// be taken proves the folder is abandoned.
const STAGING_LOCK: &str = "owner.lock";
/// Length of tempfile's random suffix (its default).
const STAGING_RAND: usize = 6;
/// At most this much of --out's name goes into the staging folder's (names stay far below the
/// 255-byte limit; the lock, not the name, is what makes removal safe).
const STAGING_TAG_CHARS: usize = 64;

/// A staging folder beside --out, locked by this run while it lives; dropped (on error, or after
/// `publish` took the checkpoint out of it) it is removed with everything left in it.
pub(crate) struct Staging {
    dir: tempfile::TempDir,
    _lock: std::fs::File,
}

impl Staging {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The part of the staging folder's name that says which --out it is for.
fn staging_tag(out: &Path) -> String {
    let name = out
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    name.chars().take(STAGING_TAG_CHARS).collect()
}

/// Take `f`'s exclusive lock without waiting; false if another process holds it.
#[cfg(unix)]
fn try_lock(f: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor `f` owns for the duration of the call; no memory is passed.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Without flock nothing proves a folder abandoned: never remove one.
#[cfg(not(unix))]
fn try_lock(_: &std::fs::File) -> bool {
    false
}

/// Staging folders a killed run (SIGKILL, power loss: no destructor ran) left beside `out` for
/// the same --out name are removed, each said on stderr; only folders with this writer's name,
/// not symbolic links, whose lock file exists and can be locked (no live run holds it). Folders
/// of the older unlocked naming (`.lab-checkpoint-XXXXXX`) cannot be told apart from a live run's,
/// so they are only listed.
fn remove_abandoned_staging(parent: &Path, out: &Path) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    let ours = format!("{STAGING_PREFIX}{}.", staging_tag(out));
    let random = |s: &str| s.len() == STAGING_RAND && s.bytes().all(|b| b.is_ascii_alphanumeric());
    for e in rd.flatten() {
        let path = e.path();
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if !is_dir {
            continue;
        }
        if name.strip_prefix(STAGING_PREFIX).is_some_and(random) {
            eprintln!(
                "note: {} looks like the staging folder of an interrupted lab run (an older build, \
                 without a lock to tell whether it is still running): remove it once no lab run is \
                 writing there",
                path.display()
            );
            continue;
        }
        if !name.strip_prefix(&ours).is_some_and(random) {
            continue;
        }
        let Ok(lock) = std::fs::File::open(path.join(STAGING_LOCK)) else {
            continue;
        };
        if !try_lock(&lock) {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => eprintln!(
                "note: removed {}: the staging folder of an interrupted run for this --out",
                path.display()
            ),
            Err(err) => eprintln!(
                "note: could not remove {} (the staging folder of an interrupted run): {err}",
                path.display()
            ),
        }
    }
}

/// `out` must not exist or be an empty folder (not a symbolic link); a staging folder is made
/// beside it now, so an unwritable destination fails before hours of work. Dropped on error, it
/// takes the partial output with it.
pub(crate) fn prepare_out(out: &Path) -> Result<Staging> {
    // A link is refused by what it is, not by what it points to: the finished checkpoint is
    // renamed onto --out, which would replace the link itself (or fail), never fill its target.
    if std::fs::symlink_metadata(out).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(LabError::invalid(
            "--out",
            format!(
                "{} is a symbolic link; give the folder itself (or a new path)",
                out.display()
            ),
        ));
    }
    if out.exists() {
        if !out.is_dir() {
            return Err(LabError::invalid(
                "--out",
                format!("{} exists and is not a folder", out.display()),
            ));
        }
        let mut entries = std::fs::read_dir(out).map_err(|e| LabError::io(out, e))?;
        if entries.next().is_some() {
            return Err(LabError::invalid(
                "--out",
                format!(
                    "{} is not empty; a whole new checkpoint is written into a new or empty folder",
                    out.display()
                ),
            ));
        }
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| {
        LabError::invalid("--out", format!("cannot create {}: {e}", parent.display()))
    })?;
    remove_abandoned_staging(&parent, out);
    let unwritable = |e: std::io::Error| {
        LabError::invalid(
            "--out",
            format!("{} is not writable: {e}", parent.display()),
        )
    };
    let dir = tempfile::Builder::new()
        .prefix(&format!("{STAGING_PREFIX}{}.", staging_tag(out)))
        .rand_bytes(STAGING_RAND)
        .tempdir_in(&parent)
        .map_err(unwritable)?;
    // Locked before it gets its final name, so a live run's lock file is never seen unlocked.
    // Where the file system cannot lock, the file keeps its first name: without a lock file the
    // folder is never taken for abandoned (a run killed there leaves it, as before).
    let pending = dir.path().join(".owner.lock.new");
    let lock = std::fs::File::create(&pending).map_err(unwritable)?;
    if try_lock(&lock) {
        std::fs::rename(&pending, dir.path().join(STAGING_LOCK)).map_err(unwritable)?;
    }
    Ok(Staging { dir, _lock: lock })
}

/// Move the finished checkpoint to `out` (an empty `out` folder is replaced). Every file is
/// synced first and the parent after the rename: the weights were, but config.json,
/// quantize_config.json and the tokenizer (plain writes and copies) could otherwise be empty in
/// a published folder after a power loss. The staging folder has the mode a `mkdir` gives under
/// the user's umask (tempfile sets none); an empty `out` the user made lends its own mode, since
/// the checkpoint takes its place.
pub(crate) fn publish(built: &Path, out: &Path) -> Result<()> {
    crate::util::sync_files_in(built)?;
    if out.is_dir() {
        let mode = std::fs::metadata(out).map_err(|e| LabError::io(out, e))?;
        std::fs::set_permissions(built, mode.permissions()).map_err(|e| LabError::io(built, e))?;
        std::fs::remove_dir(out).map_err(|e| {
            LabError::invalid(
                "--out",
                format!(
                    "{} could not be replaced (no longer empty?): {e}",
                    out.display()
                ),
            )
        })?;
    }
    crate::util::rename_durably(built, out)
}

/// The writer's quantize config carries AutoGPTQ's default damp; record the one used.
fn record_settings(dir: &Path, p: &GptqParams, method: Method) -> Result<()> {
    let patch = |v: &mut serde_json::Value| {
        if let Some(m) = v.as_object_mut() {
            m.insert("damp_percent".into(), p.damp_percent.into());
            m.insert("true_sequential".into(), true.into());
            let name = match method {
                Method::Gptq => "gptq-lab gptq",
                Method::Rtn => "gptq-lab rtn",
            };
            m.insert("quantizer".into(), name.into());
        }
    };
    for (file, key) in [
        ("quantize_config.json", None),
        ("config.json", Some("quantization_config")),
    ] {
        let path = dir.join(file);
        let mut v: serde_json::Value = crate::util::read_json(&path)?;
        match key {
            None => patch(&mut v),
            Some(k) => {
                if let Some(q) = v.get_mut(k) {
                    patch(q)
                }
            }
        }
        let mut s = serde_json::to_string_pretty(&v).map_err(|e| LabError::Json {
            path: path.clone(),
            source: e,
        })?;
        s.push('\n');
        // A plain write: the folder is private staging until `publish` renames it.
        std::fs::write(&path, s).map_err(|e| LabError::io(&path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A staging folder as a run killed with SIGKILL leaves it: no destructor ran, and the kernel
    /// released its lock.
    fn abandoned(out: &Path) -> PathBuf {
        let Staging { dir, _lock } = prepare_out(out).unwrap();
        let p = dir.keep();
        std::fs::write(p.join("activations.f32"), "partial").unwrap();
        p
    }

    #[test]
    fn an_abandoned_staging_folder_of_the_same_out_is_removed_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let out = root.join("q");
        let dead = abandoned(&out);
        // A run still going for the same --out: its lock is held.
        let live = prepare_out(&out).unwrap();
        // Look-alikes that must stay: another --out's abandoned folder, an older build's
        // (unlocked, cannot tell), one with our name but no lock file, a symbolic link with our
        // name, and a name whose random part is not tempfile's.
        let other = abandoned(&root.join("r"));
        let keep = [".lab-checkpoint-abc123", ".lab-checkpoint-q.nolock"];
        for k in keep {
            std::fs::create_dir(root.join(k)).unwrap();
        }
        let odd = root.join(".lab-checkpoint-q.1234567");
        std::fs::create_dir(&odd).unwrap();
        std::fs::write(odd.join(STAGING_LOCK), "").unwrap();
        let link = root.join(".lab-checkpoint-q.linkzz");
        std::os::unix::fs::symlink(&other, &link).unwrap();

        let next = prepare_out(&out).unwrap();
        assert!(!dead.exists(), "the abandoned folder is still there");
        assert!(live.path().join(STAGING_LOCK).is_file());
        assert!(next.path().join(STAGING_LOCK).is_file());
        assert!(other.join("activations.f32").is_file());
        for k in keep {
            assert!(root.join(k).is_dir(), "{k} was removed");
        }
        assert!(odd.is_dir() && link.is_symlink());
        // Each live staging folder goes with its run.
        let (lp, np) = (live.path().to_path_buf(), next.path().to_path_buf());
        drop((live, next));
        assert!(!lp.exists() && !np.exists());
    }

    #[test]
    fn staging_names_carry_the_out_name_within_bounds() {
        assert_eq!(staging_tag(Path::new("a/b/q13")), "q13");
        let long = "x".repeat(300);
        assert_eq!(staging_tag(Path::new(&long)).len(), STAGING_TAG_CHARS);
    }

    #[test]
    fn a_non_empty_out_is_refused_before_a_staging_folder_is_made() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("q");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        let e = prepare_out(&out).err().unwrap().to_string();
        assert!(
            e.contains(
                "is not empty; a whole new checkpoint is written into a new or empty folder"
            ),
            "{e}"
        );
        // Refused up front: nothing beside --out but --out itself.
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["q"]);
        std::fs::remove_file(out.join("notes.txt")).unwrap();
        assert!(prepare_out(&out).is_ok());
    }

    #[test]
    fn the_settings_used_are_recorded_in_both_configs_and_the_side_files_copied() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dir) = (tmp.path().join("src"), tmp.path().join("out"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dir).unwrap();
        for f in SIDE_FILES {
            std::fs::write(src.join(f), format!("{f} of the source")).unwrap();
        }
        std::fs::write(src.join("README.md"), "not copied").unwrap();
        std::fs::write(
            dir.join("quantize_config.json"),
            r#"{"bits": 4, "damp_percent": 0.01}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"hidden_size": 64, "quantization_config": {"bits": 4, "damp_percent": 0.01}}"#,
        )
        .unwrap();
        let p = GptqParams {
            damp_percent: 0.05,
            ..GptqParams::default()
        };
        finish_folder(&src, &dir, &p, Method::Rtn).unwrap();
        let read = |f: &str| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap()
        };
        let want = serde_json::json!({
            "bits": 4,
            "damp_percent": 0.05,
            "true_sequential": true,
            "quantizer": "gptq-lab rtn"
        });
        assert_eq!(read("quantize_config.json"), want);
        let cfg = read("config.json");
        assert_eq!(cfg["quantization_config"], want);
        assert_eq!(cfg["hidden_size"], 64);
        for f in SIDE_FILES {
            assert_eq!(
                std::fs::read_to_string(dir.join(f)).unwrap(),
                format!("{f} of the source")
            );
        }
        assert!(!dir.join("README.md").exists());
        finish_folder(&src, &dir, &p, Method::Gptq).unwrap();
        assert_eq!(
            read("config.json")["quantization_config"]["quantizer"],
            "gptq-lab gptq"
        );
    }

    #[cfg(unix)]
    #[test]
    fn publish_moves_the_checkpoint_onto_an_empty_out_with_the_out_folders_mode() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let tmp = tempfile::tempdir().unwrap();
        let (built, out) = (tmp.path().join("built"), tmp.path().join("q"));
        std::fs::create_dir(&built).unwrap();
        std::fs::write(built.join("config.json"), "{}").unwrap();
        set(&built, 0o700);
        // The user's empty --out, made group-readable: the checkpoint takes its mode.
        std::fs::create_dir(&out).unwrap();
        set(&out, 0o750);
        publish(&built, &out).unwrap();
        assert!(!built.exists());
        assert_eq!(
            std::fs::read_to_string(out.join("config.json")).unwrap(),
            "{}"
        );
        assert_eq!(mode(&out), 0o750);
        // No --out folder: the staging folder's own mode (its mkdir's, under the umask) stays.
        let fresh = tmp.path().join("fresh");
        std::fs::create_dir(&built).unwrap();
        set(&built, 0o711);
        publish(&built, &fresh).unwrap();
        assert_eq!(mode(&fresh), 0o711);
        // An --out that filled up meanwhile is not replaced.
        std::fs::create_dir(&built).unwrap();
        let e = publish(&built, &out).unwrap_err().to_string();
        assert!(e.contains("could not be replaced"), "{e}");
        assert!(out.join("config.json").is_file());
    }
}
