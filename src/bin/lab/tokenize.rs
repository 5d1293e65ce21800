//! `lab tokenize`: a checkpoint's tokenizer on its own, text -> ids (with each token's piece)
//! or ids -> text, to see what a prompt becomes before a model runs on it, or to compare with
//! another tool's tokenizer.
//!   lab tokenize --checkpoint DIR --text "Tell me a story." [--template v1.1] [--json]
//!   lab tokenize --checkpoint DIR --ids 1,306,4966

use anyhow::Context;
use gptq_lab::model::template::Template;
use gptq_lab::model::tokenizer::{parse_id_list, TextTokenizer, NO_TOKENIZER};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct TokenizeArgs {
    /// The checkpoint folder: its tokenizer.json, else its sentencepiece tokenizer.model.
    #[arg(long, value_parser = crate::checkpoint_folder())]
    checkpoint: PathBuf,
    /// Text to encode (BOS first unless --no-bos).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    text: Option<String>,
    /// Token ids to decode, e.g. "1,306,4966".
    #[arg(long)]
    ids: Option<String>,
    /// Wrap --text as `lab decode --prompt` does: raw (default here), v0 or v1.1.
    #[arg(long, default_value = "raw", conflicts_with = "ids")]
    template: String,
    /// Leave out the BOS token the tokenizer puts in front (--text only).
    #[arg(long, conflicts_with = "ids")]
    no_bos: bool,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(a: TokenizeArgs) -> anyhow::Result<()> {
    let tok = TextTokenizer::from_checkpoint_dir(&a.checkpoint)?
        .with_context(|| format!("{}: {NO_TOKENIZER}", a.checkpoint.display()))?;
    let template = Template::parse(&a.template)?;
    let (ids, text) = match (&a.text, &a.ids) {
        (Some(t), _) => {
            let t = template.render(t);
            (tok.encode(&t, !a.no_bos)?, t)
        }
        (None, Some(ids)) => {
            let ids = parse_id_list(ids, "--ids")?;
            if let Some(&bad) = ids.iter().find(|&&i| i as usize >= tok.vocab_size()) {
                anyhow::bail!(
                    "--ids: {bad} is outside {}'s vocabulary of {} tokens",
                    tok.path().display(),
                    tok.vocab_size()
                );
            }
            let text = tok.decode(&ids)?;
            (ids, text)
        }
        (None, None) => anyhow::bail!("give --text TEXT or --ids 1,2,3"),
    };
    let pieces: Vec<String> = ids
        .iter()
        .map(|&i| tok.token(i).unwrap_or_default())
        .collect();
    if a.json {
        let out = serde_json::json!({
            "tokenizer": gptq_lab::util::path_json(tok.path()),
            "ids": ids,
            "pieces": pieces,
            "text": text,
        });
        println!("{}", serde_json::to_string(&out)?);
    } else {
        for (id, p) in ids.iter().zip(&pieces) {
            println!("{id:>6}  {p:?}");
        }
        eprintln!("{} tokens ({})", ids.len(), tok.path().display());
    }
    Ok(())
}
