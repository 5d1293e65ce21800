//! Text <-> token ids through the checkpoint's tokenizer: `tokenizer.json` (HF `tokenizers`
//! format; its special tokens as transformers' LlamaTokenizerFast adds them, from
//! tokenizer_config.json) when there is one, else the sentencepiece `tokenizer.model` that the
//! original LLaMA, Vicuna and most 2023 GPTQ conversions ship alone (read by
//! `model::sentencepiece`, wrapped as transformers wraps it: tokenizer_config.json's
//! add_bos_token / add_eos_token / legacy / add_prefix_space, and the added tokens of
//! added_tokens.json and added_tokens_decoder); and raw id lists for runs without either.

use crate::model::sentencepiece::{AddedToken, EncodeOptions, PieceType, SpModel};
use crate::{LabError, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What the commands say when a folder has neither tokenizer file.
pub const NO_TOKENIZER: &str = "no tokenizer (tokenizer.json or tokenizer.model)";

pub struct TextTokenizer {
    inner: Inner,
    path: PathBuf,
}

enum Inner {
    /// `wrap`: the special tokens encoding adds in place of the file's post-processor, as
    /// transformers' LlamaTokenizerFast rebuilds it from tokenizer_config.json; None: the file's own.
    Hf {
        tok: Box<tokenizers::Tokenizer>,
        wrap: Option<Wrap>,
    },
    /// A sentencepiece model; `opts`: how encoding with special tokens wraps it (tokenizer_config.json).
    Sp {
        model: Box<SpModel>,
        opts: EncodeOptions,
    },
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| LabError::io(path, e))?;
        // The JSON's syntax first: tokenizers 0.23 panics (an `expect` in its decoder's
        // deserializer) on a syntax error inside the "decoder" object instead of returning one.
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| {
            LabError::bad_checkpoint(path, format!("tokenizer.json is not valid JSON: {e}"))
        })?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            LabError::bad_checkpoint(path, format!("cannot load tokenizer.json: {e}"))
        })?;
        Ok(TextTokenizer {
            inner: Inner::Hf {
                tok: Box::new(inner),
                wrap: None,
            },
            path: path.to_path_buf(),
        })
    }

    /// A sentencepiece `tokenizer.model` alone; `add_bos`: whether `encode(_, true)` puts `<s>`
    /// first (the rest as LLaMA's: legacy, no EOS, no added tokens).
    pub fn from_sentencepiece(path: &Path, add_bos: bool) -> Result<Self> {
        Ok(TextTokenizer {
            inner: Inner::Sp {
                model: Box::new(SpModel::open(path)?),
                opts: EncodeOptions {
                    add_bos,
                    ..EncodeOptions::default()
                },
            },
            path: path.to_path_buf(),
        })
    }

    /// `dir/tokenizer.json` if it exists, else `dir/tokenizer.model`; `None` if the checkpoint
    /// has neither.
    pub fn from_checkpoint_dir(dir: &Path) -> Result<Option<Self>> {
        let json = dir.join("tokenizer.json");
        if crate::util::optional_file(&json)? {
            let mut t = Self::from_file(&json)?;
            let config = json_object(&dir.join("tokenizer_config.json"))?;
            if let Inner::Hf { tok, wrap } = &mut t.inner {
                *wrap = llama_fast_wrap(tok, config.as_ref())?;
            }
            return Ok(Some(t));
        }
        let sp = dir.join("tokenizer.model");
        if crate::util::optional_file(&sp)? {
            let mut model = SpModel::open(&sp)?;
            let config = json_object(&dir.join("tokenizer_config.json"))?;
            let opts = sp_options(config.as_ref())?;
            let (added, from) = added_tokens(dir, config.as_ref())?;
            model
                .add_tokens(&added)
                .map_err(|e| LabError::bad_checkpoint(&from, e))?;
            return Ok(Some(TextTokenizer {
                inner: Inner::Sp {
                    model: Box::new(model),
                    opts,
                },
                path: sp,
            }));
        }
        Ok(None)
    }

    /// The file the tokenizer was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token ids of `text`. `add_special` puts `<s>` (BOS) in front, as LLaMA's tokenizers do:
    /// tokenizer_config.json's `add_bos_token` (default true; and `add_eos_token`, default false,
    /// puts `</s>` last), for a tokenizer.json too unless its tokenizer_class is not LLaMA's
    /// (`llama_fast_wrap`); a tokenizer.json read alone (`from_file`) keeps its post-processor.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Hf { tok, wrap } => {
                let own = add_special && wrap.is_none();
                let enc = tok.encode(text, own).map_err(|e| {
                    LabError::invalid(
                        "prompt",
                        format!("{}: cannot encode: {e}", self.path.display()),
                    )
                })?;
                let ids = enc.get_ids();
                Ok(match wrap.filter(|_| add_special) {
                    Some(w) => w
                        .bos
                        .into_iter()
                        .chain(ids.iter().copied())
                        .chain(w.eos)
                        .collect(),
                    None => ids.to_vec(),
                })
            }
            Inner::Sp { model, opts } => Ok(model.encode_with(
                text,
                EncodeOptions {
                    add_bos: add_special && opts.add_bos,
                    add_eos: add_special && opts.add_eos,
                    ..*opts
                },
            )),
        }
    }

    /// Text of `ids`, special tokens (`<s>`, `</s>`) left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let r = match &self.inner {
            Inner::Hf { tok: t, .. } => t.decode(ids, true).map_err(|e| e.to_string()),
            Inner::Sp { model, .. } => model.decode(ids),
        };
        r.map_err(|e| {
            LabError::invalid(
                "token ids",
                format!("{}: cannot decode: {e}", self.path.display()),
            )
        })
    }

    /// Whether `decode` leaves `id` out (tokenizer.json's special added tokens, as
    /// skip_special_tokens; a tokenizer.model's control, unknown and special-marked pieces). Such
    /// a token neither adds text nor ends a run of byte tokens around it.
    pub fn dropped_in_decode(&self, id: u32) -> bool {
        match &self.inner {
            Inner::Hf { tok: t, .. } => t
                .id_to_token(id)
                .is_some_and(|tok| t.get_added_vocabulary().is_special_token(&tok)),
            Inner::Sp { model, .. } => model.dropped_in_decode(id),
        }
    }

    /// Whether `id` is a byte-fallback token (`<0x0A>`): SentencePiece-BPE vocabularies such as
    /// LLaMA's spell a character they have no piece for as its UTF-8 bytes, one token each.
    pub fn is_byte_token(&self, id: u32) -> bool {
        match &self.inner {
            Inner::Hf { tok: t, .. } => t.id_to_token(id).is_some_and(|t| {
                let b = t.as_bytes();
                b.len() == 6
                    && t.starts_with("<0x")
                    && b[5] == b'>'
                    && b[3..5].iter().all(u8::is_ascii_hexdigit)
            }),
            Inner::Sp { model, .. } => model.piece_type(id) == Some(PieceType::Byte),
        }
    }

    /// The token's text as the vocabulary spells it (`\u{2581}the`, `<0x0A>`, `</s>`).
    pub fn token(&self, id: u32) -> Option<String> {
        match &self.inner {
            Inner::Hf { tok: t, .. } => t.id_to_token(id),
            Inner::Sp { model, .. } => model.piece(id).map(str::to_string),
        }
    }

    /// The id of a token such as `</s>`, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        match &self.inner {
            Inner::Hf { tok: t, .. } => t.token_to_id(token),
            Inner::Sp { model, .. } => model.id(token),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Hf { tok: t, .. } => t.get_vocab_size(true),
            Inner::Sp { model, .. } => model.vocab_size(),
        }
    }

    /// Every token (added ones included) -> id.
    fn vocab(&self) -> HashMap<String, u32> {
        match &self.inner {
            Inner::Hf { tok: t, .. } => t.get_vocab(true),
            Inner::Sp { model, .. } => model.vocab(),
        }
    }

    /// True if both map every token (added ones included) to the same id: token ids mean the
    /// same text in either model (a tokenizer.json and the tokenizer.model it was converted from
    /// compare equal).
    pub fn same_vocabulary(&self, other: &TextTokenizer) -> bool {
        self.vocab() == other.vocab()
    }
}

/// How transformers wraps a lone tokenizer.model, from tokenizer_config.json (LLaMA's defaults
/// where the file or a key is missing): add_bos_token (true; null, as transformers reads it, is
/// false), add_eos_token (false), legacy (true, also for null: transformers' default) and
/// add_prefix_space (true; null is refused: transformers' slow and fast tokenizers read it
/// differently). A value of another type is an error naming the file.
fn sp_options(config: Option<&(PathBuf, Value)>) -> Result<EncodeOptions> {
    let mut o = EncodeOptions::default();
    let Some((path, v)) = config else {
        return Ok(o);
    };
    let flag = |key: &str, missing: bool, null: Option<bool>| -> Result<bool> {
        match (v.get(key), null) {
            (None, _) => Ok(missing),
            (Some(Value::Null), Some(n)) => Ok(n),
            (Some(Value::Bool(b)), _) => Ok(*b),
            (Some(other), _) => Err(LabError::bad_checkpoint(
                path,
                format!("{key} is {other}, expected true or false"),
            )),
        }
    };
    o.add_bos = flag("add_bos_token", true, Some(false))?;
    o.add_eos = flag("add_eos_token", false, Some(false))?;
    o.legacy = flag("legacy", true, Some(true))?;
    o.add_prefix_space = flag("add_prefix_space", true, None)?;
    Ok(o)
}

/// The special tokens a LLaMA tokenizer.json's encoding adds: BOS first and / or EOS last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wrap {
    bos: Option<u32>,
    eos: Option<u32>,
}

/// How transformers encodes with a tokenizer.json in a LLaMA folder: AutoTokenizer builds
/// LlamaTokenizerFast (tokenizer_class LlamaTokenizer / LlamaTokenizerFast, or none stated: the
/// model type decides), whose constructor REPLACES the file's post-processor with BOS (if
/// add_bos_token, default true) + text + EOS (if add_eos_token, default false), the tokens named
/// by bos_token / eos_token (default `<s>` / `</s>`). So a tokenizer_config.json that turns BOS
/// off or EOS on changes the ids although tokenizer.json says otherwise, and the lab follows it.
/// Another tokenizer_class (PreTrainedTokenizerFast, say) keeps the file's post-processor: None.
/// A value of the wrong type, or a token the vocabulary lacks, is an error naming the file.
fn llama_fast_wrap(
    tok: &tokenizers::Tokenizer,
    config: Option<&(PathBuf, Value)>,
) -> Result<Option<Wrap>> {
    const LLAMA: &[&str] = &[
        "LlamaTokenizer",
        "LlamaTokenizerFast",
        "CodeLlamaTokenizer",
        "CodeLlamaTokenizerFast",
    ];
    if let Some((path, v)) = config {
        match v.get("tokenizer_class") {
            None | Some(Value::Null) => {}
            Some(Value::String(c)) if LLAMA.contains(&c.as_str()) => {}
            Some(Value::String(_)) => return Ok(None),
            Some(other) => {
                return Err(LabError::bad_checkpoint(
                    path,
                    format!("tokenizer_class is {other}, expected a class name"),
                ))
            }
        }
    }
    let o = sp_options(config)?;
    let id = |add: bool, key: &str, default: &str| -> std::result::Result<Option<u32>, String> {
        if !add {
            return Ok(None);
        }
        let text = config
            .and_then(|(_, v)| v.get(key).filter(|t| !t.is_null()))
            .map_or(Some(default), token_text);
        match text.and_then(|t| tok.token_to_id(t)) {
            Some(id) => Ok(Some(id)),
            None => Err(format!(
                "{key} {} is not in the tokenizer's vocabulary, but encoding adds it",
                text.map_or_else(|| "(not text)".to_string(), |t| format!("'{t}'"))
            )),
        }
    };
    match (
        id(o.add_bos, "bos_token", "<s>"),
        id(o.add_eos, "eos_token", "</s>"),
    ) {
        (Ok(bos), Ok(eos)) => Ok(Some(Wrap { bos, eos })),
        (Err(why), _) | (_, Err(why)) => match config {
            Some((path, _)) => Err(LabError::bad_checkpoint(path, why)),
            // No tokenizer_config.json and no `<s>`: not a LLaMA vocabulary; the file's own.
            None => Ok(None),
        },
    }
}

/// A JSON file that must hold an object, with its path; None when the file is absent.
fn json_object(path: &Path) -> Result<Option<(PathBuf, Value)>> {
    if !crate::util::optional_file(path)? {
        return Ok(None);
    }
    let v: Value = crate::util::read_json(path)?;
    if !v.is_object() {
        return Err(LabError::bad_checkpoint(path, "expected a JSON object"));
    }
    Ok(Some((path.to_path_buf(), v)))
}

/// The text of a special-token entry: "<s>" or {"content": "<s>", ...}.
fn token_text(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| v.get("content")?.as_str())
}

/// The tokens transformers adds to a lone tokenizer.model, `(text, id, special)`: added_tokens.json
/// ({"[PAD]": 32000}, as 2023 Vicuna / GPTQ folders ship it) and tokenizer_config.json's
/// added_tokens_decoder ({"32000": {"content": "[PAD]", "special": true}}). An entry of
/// added_tokens.json alone is special when tokenizer_config.json or special_tokens_map.json names
/// its text as a special token. With the file to name when the model refuses them. `config`:
/// tokenizer_config.json, read.
fn added_tokens(
    dir: &Path,
    config: Option<&(PathBuf, Value)>,
) -> Result<(Vec<AddedToken>, PathBuf)> {
    let map = json_object(&dir.join("special_tokens_map.json"))?;
    let listed = json_object(&dir.join("added_tokens.json"))?;
    let id_of = |path: &Path, what: &str, v: &Value| -> Result<u32> {
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| LabError::bad_checkpoint(path, format!("{what}: {v} is not a token id")))
    };
    // id -> (text, special where the file says)
    let mut by_id: std::collections::BTreeMap<u32, (String, Option<bool>)> = Default::default();
    let mut from = dir.join("tokenizer_config.json");
    if let Some((path, v)) = config {
        if let Some(dec) = v.get("added_tokens_decoder").filter(|d| !d.is_null()) {
            let dec = dec.as_object().ok_or_else(|| {
                LabError::bad_checkpoint(path, "added_tokens_decoder is not an object")
            })?;
            for (k, t) in dec {
                let id = k.parse::<u32>().map_err(|_| {
                    LabError::bad_checkpoint(
                        path,
                        format!("added_tokens_decoder key '{k}' is not a token id"),
                    )
                })?;
                let text = token_text(t).ok_or_else(|| {
                    LabError::bad_checkpoint(
                        path,
                        format!("added_tokens_decoder {k} has no content text"),
                    )
                })?;
                let special = match t.get("special") {
                    None | Some(Value::Null) => None,
                    Some(Value::Bool(b)) => Some(*b),
                    Some(o) => {
                        return Err(LabError::bad_checkpoint(
                            path,
                            format!(
                                "added_tokens_decoder {k}: special is {o}, expected true or false"
                            ),
                        ))
                    }
                };
                by_id.insert(id, (text.to_string(), special));
            }
        }
    }
    if let Some((path, v)) = &listed {
        for (text, id) in v.as_object().into_iter().flatten() {
            let id = id_of(path, text, id)?;
            match by_id.get(&id) {
                Some((t, _)) if t != text => {
                    return Err(LabError::bad_checkpoint(
                        path,
                        format!(
                            "token {id} is '{text}' here but '{t}' in tokenizer_config.json's \
                             added_tokens_decoder"
                        ),
                    ))
                }
                Some(_) => {}
                None => {
                    by_id.insert(id, (text.clone(), None));
                    from = path.clone();
                }
            }
        }
    }
    // The texts named as special tokens.
    let mut specials: Vec<String> = Vec::new();
    for (_, v) in config.into_iter().chain(map.as_ref()) {
        for key in [
            "bos_token",
            "eos_token",
            "unk_token",
            "pad_token",
            "sep_token",
            "cls_token",
            "mask_token",
        ] {
            specials.extend(v.get(key).and_then(token_text).map(str::to_string));
        }
        if let Some(extra) = v.get("additional_special_tokens").and_then(Value::as_array) {
            specials.extend(extra.iter().filter_map(token_text).map(str::to_string));
        }
    }
    let added = by_id
        .into_iter()
        .map(|(id, (text, special))| {
            let special = special.unwrap_or_else(|| specials.contains(&text));
            (text, id, special)
        })
        .collect();
    Ok((added, from))
}

/// Text of a growing token sequence, piece by piece, for printing while generating. A token is
/// not always text on its own (byte-fallback tokens make up one UTF-8 character together, and
/// SentencePiece's leading-space marker depends on what came before), so each push decodes the
/// whole sequence and hands out only what extends the text already given, holding back a
/// trailing U+FFFD (an incomplete character) until a later token completes it, and everything
/// while the newest token decode keeps is a byte-fallback one: the ByteFallback decoder turns a
/// whole run of byte tokens into U+FFFDs when the run is not valid UTF-8, bytes before the bad one
/// included, so text given out in the middle of a run ("\n" before a broken character) could stop
/// being a prefix of the decode, and nothing after it would ever be given. A run ends at a
/// non-byte token decode keeps (a dropped one, `</s>` or `<unk>`, sits inside the run), and text
/// before that never changes. The pieces concatenate to `decode(all tokens)`
/// (`finish` hands out whatever is left).
///
/// With a stop string (`with_stop`: Vicuna v0's "###", which starts the next turn), nothing from
/// it on is ever given out: a tail that could still become it is held back, and once it appears
/// `stopped` is true and the text ends before it.
pub struct TextStream<'a> {
    tok: &'a TextTokenizer,
    ids: Vec<u32>,
    given: String,
    stop: Option<String>,
    stopped: bool,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a TextTokenizer) -> Self {
        TextStream {
            tok,
            ids: Vec::new(),
            given: String::new(),
            stop: None,
            stopped: false,
        }
    }

    /// The same, ending the text where `stop` first appears (None: no stop string).
    pub fn with_stop(mut self, stop: Option<&str>) -> Self {
        self.stop = stop.filter(|s| !s.is_empty()).map(str::to_string);
        self
    }

    /// Whether the stop string has appeared: generation should end.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Add a token; the new text it completes (often empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        // Held while the byte run at the end may still grow: the newest token decode keeps is a
        // byte one. A token decode drops (`</s>` under --ignore-eos, `<unk>`) does not end the
        // run, so text given out before it could still turn into U+FFFDs.
        let last_kept = self
            .ids
            .iter()
            .rev()
            .find(|&&i| !self.tok.dropped_in_decode(i));
        if last_kept.is_some_and(|&i| self.tok.is_byte_token(i)) {
            return Ok(String::new());
        }
        let text = self.tok.decode(&self.ids)?;
        let ready = self.before_stop(text.trim_end_matches('\u{FFFD}'), true);
        Ok(self.extend_to(&ready))
    }

    /// Whatever the pushes have not handed out yet (up to the stop string).
    pub fn finish(&mut self) -> Result<String> {
        let text = self.tok.decode(&self.ids)?;
        let text = self.before_stop(&text, false);
        Ok(self.extend_to(&text))
    }

    /// `text` up to the stop string; `hold`: also without a tail that is the start of it.
    fn before_stop(&mut self, text: &str, hold: bool) -> String {
        let Some(stop) = self.stop.as_deref() else {
            return text.to_string();
        };
        if let Some(i) = text.find(stop) {
            self.stopped = true;
            return text[..i].to_string();
        }
        let held = if hold {
            (1..stop.len())
                .rev()
                .find(|&n| stop.is_char_boundary(n) && text.ends_with(&stop[..n]))
                .unwrap_or(0)
        } else {
            0
        };
        text[..text.len() - held].to_string()
    }

    /// The part of `text` past what was given, if `text` extends it; nothing otherwise (a later
    /// decode that rewrites earlier text is left to `finish`, which can only append too).
    fn extend_to(&mut self, text: &str) -> String {
        match text.strip_prefix(self.given.as_str()) {
            Some(new) if !new.is_empty() => {
                let new = new.to_string();
                self.given.push_str(&new);
                new
            }
            _ => String::new(),
        }
    }
}

/// Parse a raw id list such as "1, 306,4966" (commas and/or spaces between ids).
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    parse_id_list(s, "--prompt-ids")
}

/// `parse_ids` for any source of ids; errors are `invalid {what}` (the flag, or the flag and its
/// file). An empty item between commas ("1,,2", a leading or trailing comma) is refused rather
/// than dropped: it is most likely a lost id, and reading on would silently shift the rest.
pub fn parse_id_list(s: &str, what: &str) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    let commas = s.contains(',');
    for item in s.split(',') {
        let before = ids.len();
        for t in item.split_whitespace() {
            ids.push(t.parse::<u32>().map_err(|_| {
                LabError::invalid(
                    what,
                    format!("'{t}' is not a token id (a non-negative integer)"),
                )
            })?);
        }
        if commas && ids.len() == before {
            return Err(LabError::invalid(
                what,
                format!(
                    "empty item after {before} id(s): two commas in a row, or a comma at the \
                     start or end; expected ids separated by commas and/or spaces, e.g. 1,306,4966"
                ),
            ));
        }
    }
    if ids.is_empty() {
        return Err(LabError::invalid(what, "no token ids given"));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a TextStream hands out for `ids`, one entry per push, then `finish`'s.
    fn stream_pieces(tok: &TextTokenizer, ids: &[u32]) -> Vec<String> {
        let mut st = TextStream::new(tok);
        let mut pieces: Vec<String> = ids.iter().map(|&i| st.push(i).unwrap()).collect();
        pieces.push(st.finish().unwrap());
        pieces
    }

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sym-g32")
    }

    #[test]
    fn encodes_like_python_tokenizers_and_round_trips() {
        // expected.json records what the Python `tokenizers` package produced for one text.
        let text = std::fs::read_to_string(fixture().join("expected.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let check = &v["tokenizer_check"];
        let want: Vec<u32> = serde_json::from_value(check["ids_with_bos"].clone()).unwrap();
        let prompt = check["text"].as_str().unwrap();

        let tok = TextTokenizer::from_checkpoint_dir(&fixture())
            .unwrap()
            .unwrap();
        let ids = tok.encode(prompt, true).unwrap();
        assert_eq!(ids, want);
        assert_eq!(ids[0], tok.token_id("<s>").unwrap());
        assert_eq!(tok.encode(prompt, false).unwrap(), want[1..]);
        assert_eq!(tok.decode(&ids).unwrap(), prompt);
        assert!(tok.vocab_size() <= 320);
    }

    #[test]
    fn a_tokenizer_json_is_wrapped_as_llama_tokenizer_fast_wraps_it() {
        // transformers' LlamaTokenizerFast replaces tokenizer.json's post-processor with BOS (if
        // add_bos_token) + text + EOS (if add_eos_token) from tokenizer_config.json; another
        // tokenizer_class keeps the file's. The fixture's post-processor is "<s> $A".
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            fixture().join("tokenizer.json"),
            dir.path().join("tokenizer.json"),
        )
        .unwrap();
        let cfg = dir.path().join("tokenizer_config.json");
        let ids = |config: Option<&str>| {
            match config {
                Some(c) => std::fs::write(&cfg, c).unwrap(),
                None => std::fs::remove_file(&cfg).unwrap_or(()),
            }
            TextTokenizer::from_checkpoint_dir(dir.path())
                .map(|t| t.unwrap().encode("hi", true).unwrap())
                .map_err(|e| e.to_string())
        };
        let plain = ids(None).unwrap();
        let tok = TextTokenizer::from_checkpoint_dir(dir.path())
            .unwrap()
            .unwrap();
        let (bos, eos) = (tok.token_id("<s>").unwrap(), tok.token_id("</s>").unwrap());
        let text = tok.encode("hi", false).unwrap();
        assert_eq!(plain, [vec![bos], text.clone()].concat());
        assert_eq!(ids(Some("{}")).unwrap(), plain);
        assert_eq!(ids(Some(r#"{"add_bos_token": false}"#)).unwrap(), text);
        assert_eq!(ids(Some(r#"{"add_bos_token": null}"#)).unwrap(), text);
        assert_eq!(
            ids(Some(
                r#"{"add_eos_token": true, "tokenizer_class": "LlamaTokenizer"}"#
            ))
            .unwrap(),
            [vec![bos], text.clone(), vec![eos]].concat()
        );
        assert_eq!(
            ids(Some(
                r#"{"add_eos_token": true, "eos_token": {"content": "<s>"}}"#
            ))
            .unwrap(),
            [vec![bos], text.clone(), vec![bos]].concat()
        );
        // Not LLaMA's class: the file's post-processor, whatever the flags say.
        assert_eq!(
            ids(Some(
                r#"{"add_bos_token": false, "tokenizer_class": "PreTrainedTokenizerFast"}"#
            ))
            .unwrap(),
            plain
        );
        for (bad, want) in [
            ("xx", "tokenizer_config.json"),
            ("[1]", "expected a JSON object"),
            (r#"{"add_bos_token": "no"}"#, "add_bos_token"),
            (r#"{"tokenizer_class": 3}"#, "tokenizer_class"),
            (
                r#"{"bos_token": "<nope>"}"#,
                "bos_token '<nope>' is not in the tokenizer's vocabulary",
            ),
        ] {
            let e = ids(Some(bad)).unwrap_err();
            assert!(
                e.contains("tokenizer_config.json") && e.contains(want),
                "{bad}: {e}"
            );
        }
        // Without add_eos_token the EOS named need not exist (transformers never looks it up).
        assert_eq!(ids(Some(r#"{"eos_token": "<nope>"}"#)).unwrap(), plain);
    }

    #[test]
    fn streamed_pieces_add_up_to_the_decoded_text() {
        let tok = TextTokenizer::from_checkpoint_dir(&fixture())
            .unwrap()
            .unwrap();
        let stream_all = |ids: &[u32]| -> (Vec<String>, String) {
            let mut st = TextStream::new(&tok);
            let mut pieces: Vec<String> = ids.iter().map(|&i| st.push(i).unwrap()).collect();
            pieces.push(st.finish().unwrap());
            let joined = pieces.concat();
            (pieces, joined)
        };
        // Multi-byte characters go through byte-fallback tokens: no piece may show half of one.
        let text = "Tell me a story, naïve café ☕ 日本 — ok.";
        let ids = tok.encode(text, true).unwrap();
        let (pieces, joined) = stream_all(&ids);
        assert_eq!(joined, tok.decode(&ids).unwrap());
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        assert!(
            pieces.iter().filter(|p| !p.is_empty()).count() > 5,
            "{pieces:?}"
        );
        // Arbitrary id sequences (what a random model generates) add up too.
        let v = tok.vocab_size() as u32;
        let mut x = 7u32;
        for _ in 0..20 {
            let ids: Vec<u32> = (0..40)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 8) % v
                })
                .collect();
            assert_eq!(stream_all(&ids).1, tok.decode(&ids).unwrap(), "{ids:?}");
        }
    }

    /// A LLaMA-style tokenizer.json (SentencePiece BPE with byte fallback and LLaMA's decoder
    /// chain: Replace, ByteFallback, Fuse, Strip) over `pieces` after the 3 special and 256 byte
    /// tokens, as `converted_json` writes it (legacy). The fixtures' tokenizer is GPT-2's
    /// byte-level kind, which has no byte tokens.
    /// The pieces a stream with stop string `stop` hands out for `ids` (one per token, then
    /// `finish`'s), ending at the token that completes the stop string; and whether it stopped.
    fn stream_until_stop(tok: &TextTokenizer, stop: &str, ids: &[u32]) -> (Vec<String>, bool) {
        let mut st = TextStream::new(tok).with_stop(Some(stop));
        let mut pieces = Vec::new();
        for &i in ids {
            pieces.push(st.push(i).unwrap());
            if st.stopped() {
                break;
            }
        }
        pieces.push(st.finish().unwrap());
        (pieces, st.stopped())
    }

    fn llama_style_tokenizer(dir: &Path, pieces: &[&str]) -> TextTokenizer {
        let pieces: Vec<String> = pieces.iter().map(|p| p.to_string()).collect();
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, converted_json(&pieces, true, &[]).to_string()).unwrap();
        TextTokenizer::from_file(&path).unwrap()
    }

    #[test]
    fn a_broken_byte_run_does_not_stop_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let tok = llama_style_tokenizer(dir.path(), &["\u{2581}Sure", "!", "\u{2581}Enjoy", "."]);
        let id = |t: &str| tok.token_id(t).unwrap();
        assert!(tok.is_byte_token(id("<0x0A>")) && !tok.is_byte_token(id("!")));
        let stream = |ids: &[u32]| stream_pieces(&tok, ids);
        // "\n" then two bytes of a three-byte character that never comes: the decoder turns the
        // whole run, "\n" included, into U+FFFDs. Before the fix "Sure!\n" was given out, the
        // decode no longer started with it, and every later piece was empty.
        let broken = [
            id("\u{2581}Sure"),
            id("!"),
            id("<0x0A>"),
            id("<0xE2>"),
            id("<0x98>"),
            id("\u{2581}Enjoy"),
            id("."),
        ];
        let pieces = stream(&broken);
        let decoded = tok.decode(&broken).unwrap();
        assert!(decoded.ends_with(" Enjoy."), "{decoded:?}");
        assert_eq!(pieces.concat(), decoded, "{pieces:?}");
        assert_eq!(pieces[5], "\u{FFFD}\u{FFFD}\u{FFFD} Enjoy", "{pieces:?}");
        // The complete character: "\n☕" arrives with the token after the run.
        let whole = [
            id("\u{2581}Sure"),
            id("<0x0A>"),
            id("<0xE2>"),
            id("<0x98>"),
            id("<0x95>"),
            id("\u{2581}Enjoy"),
        ];
        let pieces = stream(&whole);
        assert_eq!(pieces.concat(), "Sure\n\u{2615} Enjoy", "{pieces:?}");
        assert_eq!(pieces[5], "\n\u{2615} Enjoy", "{pieces:?}");
        // A run at the very end comes out with finish.
        let tail = [id("\u{2581}Sure"), id("<0x0A>")];
        assert_eq!(stream(&tail), vec!["Sure", "", "\n"]);
    }

    #[test]
    fn a_stop_string_ends_the_text_and_its_start_is_held_back() {
        let dir = tempfile::tempdir().unwrap();
        let tok = llama_style_tokenizer(
            dir.path(),
            &[
                "\u{2581}Hi",
                "\u{2581}there",
                "#",
                "##",
                "\u{2581}Human",
                ":",
                "\u{2581}#",
            ],
        );
        let id = |t: &str| tok.token_id(t).unwrap();
        let run = |ids: &[u32]| stream_until_stop(&tok, "###", ids);
        // "Hi there\n### Human:": the "#" and "##" pieces are held until the third '#' makes
        // the stop string; nothing from it on is given.
        let ids = [
            id("\u{2581}Hi"),
            id("\u{2581}there"),
            id("<0x0A>"),
            id("#"),
            id("##"),
            id("\u{2581}Human"),
            id(":"),
        ];
        let (pieces, stopped) = run(&ids);
        assert!(stopped);
        assert_eq!(pieces.concat(), "Hi there\n", "{pieces:?}");
        assert_eq!(
            pieces.len(),
            6,
            "stopped at the token that completed it: {pieces:?}"
        );
        // A '#' that does not become "###" is given out once that is clear, and at the end.
        let (pieces, stopped) = run(&[id("\u{2581}Hi"), id("#"), id("\u{2581}there"), id("##")]);
        assert!(!stopped);
        assert_eq!(pieces, vec!["Hi", "", "# there", "", "##"]);
        // Without a stop string nothing is held.
        let mut st = TextStream::new(&tok);
        assert_eq!(st.push(id("##")).unwrap(), "##");
    }

    #[test]
    fn missing_tokenizer_is_none_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(TextTokenizer::from_checkpoint_dir(dir.path())
            .unwrap()
            .is_none());
        std::fs::write(dir.path().join("tokenizer.model"), b"\x0a\x0b").unwrap();
        let e = TextTokenizer::from_checkpoint_dir(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("tokenizer.model") && e.contains("not a sentencepiece model"),
            "{e}"
        );
        std::fs::write(dir.path().join("tokenizer.json"), b"{not json").unwrap();
        let e = TextTokenizer::from_checkpoint_dir(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
    }

    /// A lone model's pieces that spell "Hi" with and without its word-start mark.
    const HI_PIECES: [(&str, f32); 5] = [
        ("\u{2581}", -1.0),
        ("H", -2.0),
        ("i", -3.0),
        ("\u{2581}H", -4.0),
        ("\u{2581}Hi", -5.0),
    ];

    /// LLaMA's layout with a few pieces; the same ids as `llama_style_tokenizer` gives them.
    fn write_sp_model(dir: &Path, pieces: &[(&str, f32)]) {
        use crate::model::sentencepiece::test_model::{model_bytes, Spec};
        let pieces: Vec<(&str, f32, u64)> = pieces.iter().map(|&(t, s)| (t, s, 1)).collect();
        std::fs::write(
            dir.join("tokenizer.model"),
            model_bytes(&pieces, &Spec::default()),
        )
        .unwrap();
    }

    #[test]
    fn a_lone_tokenizer_model_is_read_and_tokenizer_json_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        let pieces = [
            ("\u{2581}", -1.0),
            ("H", -2.0),
            ("i", -3.0),
            ("\u{2581}H", -4.0),
            ("\u{2581}Hi", -5.0),
        ];
        write_sp_model(dir.path(), &pieces);
        let tok = TextTokenizer::from_checkpoint_dir(dir.path())
            .unwrap()
            .unwrap();
        assert!(tok.path().ends_with("tokenizer.model"));
        let hi = tok.token_id("\u{2581}Hi").unwrap();
        assert_eq!(tok.encode("Hi", true).unwrap(), vec![1, hi]);
        assert_eq!(tok.encode("Hi", false).unwrap(), vec![hi]);
        assert_eq!(tok.decode(&[1, hi, 2]).unwrap(), "Hi");
        assert!(tok.is_byte_token(tok.token_id("<0x0A>").unwrap()) && !tok.is_byte_token(hi));
        assert_eq!(tok.vocab_size(), 3 + 256 + pieces.len());
        // tokenizer_config.json's add_bos_token: false leaves BOS out; a non-boolean is named.
        let cfg = dir.path().join("tokenizer_config.json");
        std::fs::write(&cfg, r#"{"add_bos_token": false}"#).unwrap();
        let tok = TextTokenizer::from_checkpoint_dir(dir.path())
            .unwrap()
            .unwrap();
        assert_eq!(tok.encode("Hi", true).unwrap(), vec![hi]);
        std::fs::write(&cfg, r#"{"add_bos_token": "yes"}"#).unwrap();
        let e = TextTokenizer::from_checkpoint_dir(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("tokenizer_config.json") && e.contains("add_bos_token"),
            "{e}"
        );
        // Beside a tokenizer.json of the same vocabulary, the JSON is read, and the two compare
        // as the same vocabulary (so a --reference with either kind is accepted).
        std::fs::remove_file(&cfg).unwrap();
        let names: Vec<&str> = pieces.iter().map(|p| p.0).collect();
        let json = llama_style_tokenizer(dir.path(), &names);
        let from_dir = TextTokenizer::from_checkpoint_dir(dir.path())
            .unwrap()
            .unwrap();
        assert!(from_dir.path().ends_with("tokenizer.json"));
        let sp =
            TextTokenizer::from_sentencepiece(&dir.path().join("tokenizer.model"), true).unwrap();
        assert!(sp.same_vocabulary(&json) && json.same_vocabulary(&sp));
    }

    /// The tokenizer.json transformers' LlamaConverter makes of a sentencepiece model with
    /// `pieces` (after the 3 special and 256 byte pieces, scores falling with the id), legacy or
    /// not, with extra added tokens `(text, id, special)`: what AutoTokenizer loads a folder with
    /// only tokenizer.model as. Merges: every split of a piece into two pieces, ranked by the
    /// piece (sentencepiece's score order; with distinct scores there is no tie to break).
    fn converted_json(pieces: &[String], legacy: bool, added: &[AddedToken]) -> serde_json::Value {
        let mut vocab = serde_json::Map::new();
        for (i, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
            vocab.insert(t.to_string(), i.into());
        }
        for b in 0..256 {
            vocab.insert(format!("<0x{b:02X}>"), (3 + b).into());
        }
        for (i, p) in pieces.iter().enumerate() {
            vocab.insert(p.clone(), (259 + i).into());
        }
        let mut merges = Vec::new();
        for p in pieces {
            for (k, _) in p.char_indices().skip(1) {
                let (l, r) = p.split_at(k);
                if pieces.iter().any(|x| x == l) && pieces.iter().any(|x| x == r) {
                    merges.push(serde_json::json!([l, r]));
                }
            }
        }
        let token = |id: u32, c: &str, special: bool| {
            serde_json::json!({"id": id, "content": c, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": special})
        };
        let mut added_json = vec![
            token(0, "<unk>", true),
            token(1, "<s>", true),
            token(2, "</s>", true),
        ];
        added_json.extend(added.iter().map(|(t, id, sp)| token(*id, t, *sp)));
        let (normalizer, pre_tokenizer) = if legacy {
            (
                serde_json::json!({"type": "Sequence", "normalizers": [
                    {"type": "Prepend", "prepend": "\u{2581}"},
                    {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}]}),
                serde_json::Value::Null,
            )
        } else {
            (
                serde_json::Value::Null,
                serde_json::json!({"type": "Metaspace", "replacement": "\u{2581}",
                    "prepend_scheme": "first", "split": false}),
            )
        };
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added_json,
            "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges}
        })
    }

    /// A lone tokenizer.model read with tokenizer_config.json's legacy true and false, and an
    /// added token, gives the ids of the tokenizer transformers converts from it (run through the
    /// tokenizers crate, the library AutoTokenizer uses) on random texts of words, spaces,
    /// special and added literals.
    #[test]
    fn lone_model_ids_equal_the_converted_tokenizers_legacy_or_not() {
        let mut rnd = crate::model::sentencepiece::test_model::lcg(4242);
        // A vocabulary grown as BPE grows one; no piece holds a character before U+2581
        // (LLaMA's kind).
        let mut pieces: Vec<String> = ["\u{2581}", "a", "b", "c", "é"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        while pieces.len() < 40 {
            let t = format!("{}{}", pieces[rnd(pieces.len())], pieces[rnd(pieces.len())]);
            let before_space = t
                .chars()
                .zip(t.chars().skip(1))
                .any(|(a, b)| b == '\u{2581}' && a != '\u{2581}');
            if !pieces.contains(&t) && t.chars().count() <= 5 && !before_space {
                pieces.push(t);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let scored: Vec<(&str, f32)> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_str(), -(i as f32) - 1.0))
            .collect();
        write_sp_model(dir.path(), &scored);
        let pad = 259 + pieces.len() as u32;
        std::fs::write(
            dir.path().join("added_tokens.json"),
            format!(r#"{{"[PAD]": {pad}}}"#),
        )
        .unwrap();
        let alphabet = [
            "a", "b", "c", "é", "d", " ", "  ", "<s>", "</s>", "[PAD]", "\n", "ab", "\u{2581}",
        ];
        for legacy in [true, false] {
            std::fs::write(
                dir.path().join("tokenizer_config.json"),
                format!(r#"{{"legacy": {legacy}, "add_bos_token": true}}"#),
            )
            .unwrap();
            let tok = TextTokenizer::from_checkpoint_dir(dir.path())
                .unwrap()
                .unwrap();
            let json = converted_json(&pieces, legacy, &[("[PAD]".to_string(), pad, false)]);
            let hf = tokenizers::Tokenizer::from_bytes(json.to_string()).unwrap();
            let json_path = dir.path().join(format!("tokenizer-{legacy}.json"));
            std::fs::write(&json_path, json.to_string()).unwrap();
            let from_json = TextTokenizer::from_file(&json_path).unwrap();
            for _ in 0..600 {
                let text: String = (0..rnd(10))
                    .map(|_| alphabet[rnd(alphabet.len())])
                    .collect();
                let want = hf.encode(text.as_str(), false).unwrap().get_ids().to_vec();
                assert_eq!(
                    tok.encode(&text, false).unwrap(),
                    want,
                    "legacy {legacy}: {text:?}"
                );
                let mut with_bos = vec![1];
                with_bos.extend(&want);
                assert_eq!(tok.encode(&text, true).unwrap(), with_bos, "{text:?}");
            }
            // Decoding (skip_special_tokens, as lab decode prints): random ids of pieces, bytes
            // (runs valid UTF-8 or not), specials and the added token, after a first piece of the
            // model (sentencepiece drops that piece's U+2581, the converted decoder strips one
            // leading space: they agree there, not on a text that starts with a byte).
            let vocab = 259 + pieces.len();
            for _ in 0..600 {
                let mut ids = vec![(259 + rnd(pieces.len())) as u32];
                for _ in 0..rnd(12) {
                    ids.push(match rnd(6) {
                        0 => rnd(3) as u32,
                        1 => pad,
                        2 | 3 => (3 + rnd(256)) as u32,
                        _ => (259 + rnd(vocab - 259)) as u32,
                    });
                }
                assert_eq!(
                    tok.decode(&ids).unwrap(),
                    hf.decode(&ids, true).unwrap(),
                    "legacy {legacy}: {ids:?}"
                );
                // Streamed, the pieces add up to the decode through either reader, whatever
                // specials sit inside a byte run.
                for t in [&tok, &from_json] {
                    assert_eq!(
                        stream_pieces(t, &ids).concat(),
                        t.decode(&ids).unwrap(),
                        "legacy {legacy}: {ids:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn tokenizer_config_and_added_tokens_shape_a_lone_model() {
        let dir = tempfile::tempdir().unwrap();
        write_sp_model(dir.path(), &HI_PIECES);
        let cfg = dir.path().join("tokenizer_config.json");
        let open = || TextTokenizer::from_checkpoint_dir(dir.path()).map(Option::unwrap);
        let err = || open().err().unwrap().to_string();
        let hi = 259 + 4;
        // add_eos_token puts </s> last; add_bos_token null leaves BOS out (as transformers).
        std::fs::write(&cfg, r#"{"add_eos_token": true, "add_bos_token": null}"#).unwrap();
        assert_eq!(open().unwrap().encode("Hi", true).unwrap(), vec![hi, 2]);
        assert_eq!(open().unwrap().encode("Hi", false).unwrap(), vec![hi]);
        // Non-legacy: no U+2581 after a literal.
        std::fs::write(&cfg, r#"{"legacy": false}"#).unwrap();
        let h = 259 + 1;
        let i = 259 + 2;
        assert_eq!(
            open().unwrap().encode("<s>Hi", false).unwrap(),
            vec![1, h, i]
        );
        std::fs::write(&cfg, r#"{"legacy": true}"#).unwrap();
        assert_eq!(open().unwrap().encode("<s>Hi", false).unwrap(), vec![1, hi]);
        // add_prefix_space null is refused (slow and fast tokenizers read it differently).
        std::fs::write(&cfg, r#"{"add_prefix_space": null}"#).unwrap();
        assert!(err().contains("add_prefix_space"), "{}", err());
        std::fs::write(&cfg, r#"{"legacy": "no"}"#).unwrap();
        assert!(
            err().contains("tokenizer_config.json") && err().contains("legacy"),
            "{}",
            err()
        );
        // An added token: split out of text, decoded as its text unless special; the vocabulary
        // grows by it.
        std::fs::remove_file(&cfg).unwrap();
        let added = dir.path().join("added_tokens.json");
        let pad = 259 + 5;
        std::fs::write(&added, format!(r#"{{"[PAD]": {pad}}}"#)).unwrap();
        let tok = open().unwrap();
        assert_eq!(tok.vocab_size(), pad as usize + 1);
        assert_eq!(tok.encode("Hi[PAD]Hi", false).unwrap(), vec![hi, pad, hi]);
        assert_eq!(tok.decode(&[hi, pad]).unwrap(), "Hi[PAD]");
        std::fs::write(
            dir.path().join("special_tokens_map.json"),
            r#"{"pad_token": "[PAD]"}"#,
        )
        .unwrap();
        assert_eq!(open().unwrap().decode(&[hi, pad]).unwrap(), "Hi");
        // tokenizer_config.json's added_tokens_decoder says special itself.
        std::fs::write(
            &cfg,
            format!(r#"{{"added_tokens_decoder": {{"{pad}": {{"content": "[PAD]", "special": false}}}}}}"#),
        )
        .unwrap();
        assert_eq!(open().unwrap().decode(&[hi, pad]).unwrap(), "Hi[PAD]");
        // Refused, naming the file: a gap after the pieces, a text the model has, two texts for
        // one id.
        std::fs::remove_file(&cfg).unwrap();
        std::fs::write(&added, format!(r#"{{"[PAD]": {}}}"#, pad + 1)).unwrap();
        assert!(
            err().contains("added_tokens.json") && err().contains("without a gap"),
            "{}",
            err()
        );
        std::fs::write(&added, format!(r#"{{"H": {pad}}}"#)).unwrap();
        assert!(err().contains("piece 260 already"), "{}", err());
        std::fs::write(&added, format!(r#"{{"[PAD]": {pad}}}"#)).unwrap();
        std::fs::write(
            &cfg,
            format!(r#"{{"added_tokens_decoder": {{"{pad}": {{"content": "<pad>"}}}}}}"#),
        )
        .unwrap();
        assert!(
            err().contains("'<pad>' in tokenizer_config.json"),
            "{}",
            err()
        );
        std::fs::write(&added, r#"{"[PAD]": -1}"#).unwrap();
        std::fs::remove_file(&cfg).unwrap();
        assert!(err().contains("not a token id"), "{}", err());
        // A model piece an added token marks special ("▁Hi" here): the merges still produce it,
        // as the fast tokenizer's BPE does, and decoding drops it as skip_special_tokens does.
        std::fs::remove_file(&added).unwrap();
        std::fs::write(
            &cfg,
            format!(
                r#"{{"added_tokens_decoder": {{"{hi}": {{"content": "\u2581Hi", "special": true}}}}}}"#
            ),
        )
        .unwrap();
        let tok = open().unwrap();
        assert_eq!(tok.encode("Hi", false).unwrap(), vec![hi]);
        assert_eq!(tok.decode(&[h, i, hi, h]).unwrap(), "HiH");
    }

    #[test]
    fn a_sentencepiece_stream_adds_up_through_byte_runs() {
        let dir = tempfile::tempdir().unwrap();
        write_sp_model(
            dir.path(),
            &[
                ("\u{2581}", -1.0),
                ("\u{2581}Sure", -2.0),
                ("!", -3.0),
                ("\u{2581}Enjoy", -4.0),
            ],
        );
        let tok = TextTokenizer::from_checkpoint_dir(dir.path())
            .unwrap()
            .unwrap();
        let id = |t: &str| tok.token_id(t).unwrap();
        let stream = |ids: &[u32]| stream_pieces(&tok, ids);
        let whole = [
            id("\u{2581}Sure"),
            id("!"),
            id("<0x0A>"),
            id("<0xE2>"),
            id("<0x98>"),
            id("<0x95>"),
            id("\u{2581}Enjoy"),
        ];
        let pieces = stream(&whole);
        assert_eq!(pieces.concat(), "Sure!\n\u{2615} Enjoy", "{pieces:?}");
        assert_eq!(pieces[6], "\n\u{2615} Enjoy", "{pieces:?}");
        // A broken run: the text before it is never taken back, and the run is one U+FFFD per
        // byte, its valid "\n" included (tokenizers' ByteFallback, as from tokenizer.json).
        let broken = [
            id("\u{2581}Sure"),
            id("<0x0A>"),
            id("<0xE2>"),
            id("\u{2581}Enjoy"),
        ];
        let pieces = stream(&broken);
        assert_eq!(pieces.concat(), tok.decode(&broken).unwrap(), "{pieces:?}");
        assert_eq!(pieces.concat(), "Sure\u{FFFD}\u{FFFD} Enjoy", "{pieces:?}");
        assert_eq!(pieces[0], "Sure", "{pieces:?}");
        // A token decode drops (</s> under --ignore-eos, <unk>) inside a run does not end it:
        // the "\n" before it is not given out, and later text still is.
        for dropped in [2, 0] {
            let ids = [
                id("\u{2581}Sure"),
                id("<0x0A>"),
                dropped,
                id("<0xE2>"),
                id("\u{2581}Enjoy"),
                id("\u{2581}Sure"),
            ];
            let pieces = stream(&ids);
            assert_eq!(pieces.concat(), tok.decode(&ids).unwrap(), "{pieces:?}");
            assert_eq!(
                pieces[..5].concat(),
                "Sure\u{FFFD}\u{FFFD} Enjoy",
                "{pieces:?}"
            );
            assert_eq!(pieces[1..4].concat(), "", "{pieces:?}");
        }
        // Text encoded and streamed back is the text.
        let text = "Sure! Enjoy \u{2615}\n日本";
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(stream(&ids).concat(), text);
    }

    /// tokenizer_config.json's `legacy: null` is transformers' default, legacy (a U+2581 after a
    /// literal too); a special token named in additional_special_tokens (a string or an entry
    /// with "content") makes an added token special, dropped in decode.
    #[test]
    fn legacy_null_and_additional_special_tokens_read_as_transformers_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        write_sp_model(dir.path(), &HI_PIECES);
        let open = || {
            TextTokenizer::from_checkpoint_dir(dir.path())
                .unwrap()
                .unwrap()
        };
        let cfg = dir.path().join("tokenizer_config.json");
        let hi = 259 + 4;
        std::fs::write(&cfg, r#"{"legacy": null}"#).unwrap();
        assert_eq!(open().encode("<s>Hi", false).unwrap(), vec![1, hi]);
        std::fs::remove_file(&cfg).unwrap();
        let pad = 259 + 5;
        std::fs::write(
            dir.path().join("added_tokens.json"),
            format!(r#"{{"[PAD]": {pad}, "[SEP]": {}}}"#, pad + 1),
        )
        .unwrap();
        assert_eq!(open().decode(&[hi, pad, pad + 1]).unwrap(), "Hi[PAD][SEP]");
        std::fs::write(
            dir.path().join("special_tokens_map.json"),
            r#"{"additional_special_tokens": ["[PAD]", {"content": "[SEP]"}]}"#,
        )
        .unwrap();
        assert_eq!(open().decode(&[hi, pad, pad + 1]).unwrap(), "Hi");
    }

    /// Decoding a sequence that starts with a byte or a (non-special) added token: the converted
    /// tokenizer's decoder strips one leading space of the whole text, so the U+2581 of the piece
    /// after is a space, and the lone model agrees ("A Hi", "[PAD] Hi").
    #[test]
    fn a_leading_byte_or_added_token_keeps_the_next_space() {
        let dir = tempfile::tempdir().unwrap();
        write_sp_model(dir.path(), &HI_PIECES);
        let pad = 259 + HI_PIECES.len() as u32;
        std::fs::write(
            dir.path().join("added_tokens.json"),
            format!(r#"{{"[PAD]": {pad}}}"#),
        )
        .unwrap();
        let tok = TextTokenizer::from_checkpoint_dir(dir.path())
            .unwrap()
            .unwrap();
        let names: Vec<String> = HI_PIECES.iter().map(|(p, _)| p.to_string()).collect();
        let json = converted_json(&names, true, &[("[PAD]".to_string(), pad, false)]);
        let hf = tokenizers::Tokenizer::from_bytes(json.to_string()).unwrap();
        let hi = tok.token_id("\u{2581}Hi").unwrap();
        let a = tok.token_id("<0x41>").unwrap();
        for (ids, want) in [
            (vec![a, hi], "A Hi"),
            (vec![1, a, a, hi], "AA Hi"),
            (vec![pad, hi], "[PAD] Hi"),
            (vec![1, pad, hi, hi], "[PAD] Hi Hi"),
        ] {
            assert_eq!(hf.decode(&ids, true).unwrap(), want, "{ids:?}");
            assert_eq!(tok.decode(&ids).unwrap(), want, "{ids:?}");
        }
    }

    /// A stop string whose first character is more than one byte (a chat template's "☕!"
    /// here): the tails held back are cut at its character boundaries only.
    #[test]
    fn a_multibyte_stop_string_is_held_at_character_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let tok = llama_style_tokenizer(dir.path(), &["\u{2581}Sure", "!", "\u{2581}Enjoy"]);
        let id = |t: &str| tok.token_id(t).unwrap();
        let cup = [id("<0xE2>"), id("<0x98>"), id("<0x95>")];
        let run = |ids: &[u32]| stream_until_stop(&tok, "\u{2615}!", ids);
        let stop = [
            &[id("\u{2581}Sure")][..],
            &cup,
            &[id("!"), id("\u{2581}Enjoy")],
        ]
        .concat();
        let (pieces, stopped) = run(&stop);
        assert!(stopped);
        assert_eq!(pieces, vec!["Sure", "", "", "", "", ""]);
        let go_on = [
            &[id("\u{2581}Sure")][..],
            &cup,
            &[id("\u{2581}Enjoy"), id("!")],
        ]
        .concat();
        let (pieces, stopped) = run(&go_on);
        assert!(!stopped);
        assert_eq!(pieces.concat(), "Sure\u{2615} Enjoy!");
        assert_eq!(pieces[4], "\u{2615} Enjoy", "{pieces:?}");
    }

    #[test]
    fn parse_ids_accepts_commas_and_spaces_and_names_bad_entries() {
        assert_eq!(parse_ids("1,2, 3 4").unwrap(), vec![1, 2, 3, 4]);
        let e = parse_ids("1,x,3").unwrap_err().to_string();
        assert!(e.contains("--prompt-ids") && e.contains("'x'"), "{e}");
        assert!(parse_ids("-1").is_err());
        assert!(parse_ids(" , ").is_err());
    }

    #[test]
    fn an_empty_item_between_commas_is_refused_not_dropped() {
        for bad in ["1,,2", ",1,2", "1,2,", "1, ,2"] {
            let e = parse_ids(bad).unwrap_err().to_string();
            assert!(
                e.contains("--prompt-ids") && e.contains("empty item"),
                "{bad}: {e}"
            );
        }
        let e = parse_id_list("4,,5", "--calib-ids ids.txt")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("invalid --calib-ids ids.txt: empty item after 1 id"),
            "{e}"
        );
        // Spaces alone, or around commas, still separate ids.
        assert_eq!(parse_ids(" 1 ,2\n3\t4 ").unwrap(), vec![1, 2, 3, 4]);
    }
}
