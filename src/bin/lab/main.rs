//! `lab`: the command-line front end. Each subcommand has its own file beside this one with its
//! flags (`XxxArgs`) and a `run`; this file only dispatches and maps errors to a non-zero exit.

mod bench;
mod check;
mod decode;
mod eval;
mod plan;
mod quantize;
mod report;
mod run;
mod tokenize;
mod tune;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "lab",
    version,
    about = "4-bit GPTQ kernel lab: check, bench, tune, decode, plan"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// One Cmd is parsed per process: the size gap between subcommands' arguments costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Print what this binary was built from.
    Version {
        #[arg(long)]
        json: bool,
    },
    /// List CUDA devices (or say why there are none).
    Devices,
    /// Check every kernel variant against the CPU f64 reference (needs a GPU).
    Check(check::CheckArgs),
    /// Time kernel families and write reports/<gpu>/<family>.{json,md} (needs a GPU).
    Bench(bench::BenchArgs),
    /// Autotune kernels for one GPU and write tuning/<gpu>.json.
    Tune(tune::TuneArgs),
    /// Generate tokens with the CPU reference engine or the GPU engine.
    Decode(decode::DecodeArgs),
    /// VRAM planner: what fits on which card, at which context.
    Plan(plan::PlanArgs),
    /// GPTQ-quantize an fp16 LLaMA/Vicuna checkpoint (and measure the gain over RTN).
    Quantize(quantize::QuantizeArgs),
    /// Write a GPTQ checkpoint of a preset's exact shapes (Vicuna 7B / 13B / 33B, the v1.5 and 16k
    /// presets) with random weights (loader, VRAM and GPU-vs-CPU tests without a download; not a
    /// language model).
    SynthCheckpoint(quantize::SynthArgs),
    /// Perplexity of a checkpoint on a text, and KL to a reference (CPU reference engine or GPU engine).
    Eval(eval::EvalArgs),
    /// A checkpoint's tokenizer alone: text -> ids and pieces, or ids -> text.
    Tokenize(tokenize::TokenizeArgs),
    /// Write markdown/JSON/plots from recorded runs.
    Report(report::ReportArgs),
    /// The main job: ceilings -> check -> tune -> decode -> report (plan + tiny CPU model without a GPU).
    Run(run::RunArgs),
}

fn main() {
    // A closed stdout (`lab tokenize ... | head`) ends the process quietly, as it ends any Unix
    // tool: Rust starts with SIGPIPE ignored, so print! would panic on the broken pipe instead.
    // SAFETY: the first thing the process does, before any thread exists.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let (cli, matches) = parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    if let Err(e) = dispatch(cli, &matches) {
        eprintln!("error: {}", error_chain(&e));
        std::process::exit(1);
    }
}

/// Runs one subcommand given as words, e.g. `["plan", "--json"]`: how `lab run` chains the
/// other subcommands with exactly the flags a user would type. Each runs in a child process of
/// this binary: a kernel fault poisons a process's CUDA context, and must not take the steps
/// after it (the other measurements of a run) with it. The words are parsed here first, so a
/// wrong flag fails before anything runs.
pub(crate) fn run_words(words: &[&str]) -> anyhow::Result<()> {
    let argv = std::iter::once("lab").chain(words.iter().copied());
    parse(argv)?;
    let exe = std::env::current_exe().context("locating the lab binary for a step of lab run")?;
    let status = std::process::Command::new(&exe)
        .args(words)
        .status()
        .with_context(|| format!("starting {} {}", exe.display(), words.join(" ")))?;
    if !status.success() {
        anyhow::bail!("lab {} failed ({status})", words.join(" "));
    }
    Ok(())
}

/// The command line, parsed, with its matches (which say which flags were typed and which took
/// their defaults). Every flag that takes a value accepts one that looks like a negative number,
/// so `--ctx -5` reaches the flag's own parser ("invalid value '-5' for '--ctx <CTX>'") instead
/// of clap's "unexpected argument '-5' found", which names no flag. A comma-separated list that
/// starts with a negative number (`--group -1,128`) is no number, so such a value is joined to its
/// flag first (`--group=-1,128`); "--group --ctx 5" still says --group lacks a value.
fn parse<I, T>(argv: I) -> Result<(Cli, ArgMatches), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cmd = Cli::command().mut_subcommands(|sub| {
        sub.mut_args(|arg| {
            if arg.get_action().takes_values() {
                arg.allow_negative_numbers(true)
            } else {
                arg
            }
        })
    });
    // Long names of the comma-separated list flags.
    let lists: Vec<String> = cmd
        .get_subcommands()
        .flat_map(|sub| sub.get_arguments())
        .filter(|a| a.get_value_delimiter().is_some())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    for a in argv.into_iter().map(Into::into) {
        let joins = a.to_str().is_some_and(|v| {
            let mut c = v.chars();
            c.next() == Some('-') && c.next().is_some_and(|d| d.is_ascii_digit())
        }) && args
            .last()
            .and_then(|p| p.to_str())
            .is_some_and(|p| lists.iter().any(|l| l == p));
        match args.last_mut() {
            Some(flag) if joins => {
                flag.push("=");
                flag.push(&a);
            }
            _ => args.push(a),
        }
    }
    let matches = cmd.try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    Ok((cli, matches))
}

/// The parser of every `--checkpoint` / `--reference` flag: a path, any bytes (a folder name
/// need not be UTF-8), refused when it names a file. The commands read config.json, the
/// tokenizer and generation_config.json beside the weights, so a `model.safetensors` given here
/// would fail later as ".../model.safetensors/config.json: Not a directory".
pub(crate) fn checkpoint_folder() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser;
    clap::builder::PathBufValueParser::new().try_map(|p: PathBuf| {
        if p.is_file() {
            Err(format!(
                "{} is a file; expected the checkpoint's folder (config.json, the .safetensors \
                 weights, the tokenizer)",
                p.display()
            ))
        } else {
            Ok(p)
        }
    })
}

/// Refuses the flags of the group `A` (flattened into a subcommand's arguments) that the user
/// typed, for a run that does not use them: a flag silently ignored reads as one obeyed. Flags
/// left at their defaults pass. `why` follows the flag's name in the error.
pub(crate) fn refuse_typed<A: clap::Args>(m: &ArgMatches, why: &str) -> anyhow::Result<()> {
    let group = A::augment_args(clap::Command::new("group"));
    for arg in group.get_arguments() {
        if m.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            let name = arg.get_long().unwrap_or(arg.get_id().as_str());
            anyhow::bail!("--{name}: {why}");
        }
    }
    Ok(())
}

fn dispatch(cli: Cli, matches: &ArgMatches) -> anyhow::Result<()> {
    // The subcommand's own matches (the derived Cmd always has one).
    let sub = matches.subcommand().map(|(_, m)| m).unwrap_or(matches);
    match cli.cmd {
        Cmd::Version { json } => version(json),
        Cmd::Devices => devices(),
        Cmd::Check(a) => check::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Tune(a) => tune::run(a),
        Cmd::Decode(a) => decode::run(a, sub),
        Cmd::Plan(a) => plan::run(a),
        Cmd::Quantize(a) => quantize::run(a),
        Cmd::SynthCheckpoint(a) => quantize::run_synth(a),
        Cmd::Eval(a) => eval::run(a, sub),
        Cmd::Tokenize(a) => tokenize::run(a),
        Cmd::Report(a) => report::run(a),
        Cmd::Run(a) => run::run(a),
    }
}

/// The error and its causes, "a: b: c", leaving out a cause whose text the message already
/// carries (the library's errors write their wrapped error into their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if s.contains(&c) {
            continue;
        }
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&c);
    }
    s
}

fn version(json: bool) -> anyhow::Result<()> {
    let b = gptq_lab::build_info::build_info();
    if json {
        println!("{}", serde_json::to_string(&b)?);
    } else {
        println!(
            "lab {} (git {}, kernels {} {}, archs {:?})",
            b.version,
            b.git_rev,
            b.kernel_hash,
            if b.kernels_built {
                "built"
            } else {
                "NOT built"
            },
            b.archs
        );
    }
    Ok(())
}

fn devices() -> anyhow::Result<()> {
    match gptq_lab::cuda::open(0) {
        Ok(gpu) => {
            println!("{}", serde_json::to_string_pretty(&gpu.info)?);
            // stderr: stdout stays the device's JSON (scripts/device-check keeps it as device.json).
            eprintln!("kernels: {}", gpu.kernels_verdict());
        }
        // Not on stdout, and a failure: scripts keep stdout as device.json and must not take a
        // sentence for the device's JSON.
        Err(e) => anyhow::bail!("no GPU to describe: {e}"),
    }
    Ok(())
}
