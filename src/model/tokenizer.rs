//! Text <-> token ids through the checkpoint's tokenizer: `tokenizer.json` (HF `tokenizers`
//! format) when there is one, else the sentencepiece `tokenizer.model` that the original LLaMA,
//! Vicuna and most 2023 GPTQ conversions ship alone (read by `model::sentencepiece`, with
//! `add_bos_token` from tokenizer_config.json); and raw id lists for runs without either.

use crate::model::sentencepiece::{PieceType, SpModel};
use crate::{LabError, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What the commands say when a folder has neither tokenizer file.
pub const NO_TOKENIZER: &str = "no tokenizer (tokenizer.json or tokenizer.model)";

pub struct TextTokenizer {
    inner: Inner,
    path: PathBuf,
}

enum Inner {
    Hf(Box<tokenizers::Tokenizer>),
    /// A sentencepiece model; `add_bos`: what encoding with special tokens puts in front.
    Sp {
        model: Box<SpModel>,
        add_bos: bool,
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
            inner: Inner::Hf(Box::new(inner)),
            path: path.to_path_buf(),
        })
    }

    /// A sentencepiece `tokenizer.model`; `add_bos`: whether `encode(_, true)` puts `<s>` first.
    pub fn from_sentencepiece(path: &Path, add_bos: bool) -> Result<Self> {
        Ok(TextTokenizer {
            inner: Inner::Sp {
                model: Box::new(SpModel::open(path)?),
                add_bos,
            },
            path: path.to_path_buf(),
        })
    }

    /// `dir/tokenizer.json` if it exists, else `dir/tokenizer.model`; `None` if the checkpoint
    /// has neither.
    pub fn from_checkpoint_dir(dir: &Path) -> Result<Option<Self>> {
        let json = dir.join("tokenizer.json");
        if crate::util::optional_file(&json)? {
            return Self::from_file(&json).map(Some);
        }
        let sp = dir.join("tokenizer.model");
        if crate::util::optional_file(&sp)? {
            let add_bos = add_bos_token(dir)?;
            return Self::from_sentencepiece(&sp, add_bos).map(Some);
        }
        Ok(None)
    }

    /// The file the tokenizer was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token ids of `text`. `add_special` puts `<s>` (BOS) in front, as LLaMA's tokenizers do:
    /// tokenizer.json's post-processor, or tokenizer_config.json's `add_bos_token` (default true)
    /// for a sentencepiece model.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Hf(t) => {
                let enc = t.encode(text, add_special).map_err(|e| {
                    LabError::invalid(
                        "prompt",
                        format!("{}: cannot encode: {e}", self.path.display()),
                    )
                })?;
                Ok(enc.get_ids().to_vec())
            }
            Inner::Sp { model, add_bos } => Ok(model.encode(text, add_special && *add_bos)),
        }
    }

    /// Text of `ids`, special tokens (`<s>`, `</s>`) left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let r = match &self.inner {
            Inner::Hf(t) => t.decode(ids, true).map_err(|e| e.to_string()),
            Inner::Sp { model, .. } => model.decode(ids),
        };
        r.map_err(|e| {
            LabError::invalid(
                "token ids",
                format!("{}: cannot decode: {e}", self.path.display()),
            )
        })
    }

    /// Whether `id` is a byte-fallback token (`<0x0A>`): SentencePiece-BPE vocabularies such as
    /// LLaMA's spell a character they have no piece for as its UTF-8 bytes, one token each.
    pub fn is_byte_token(&self, id: u32) -> bool {
        match &self.inner {
            Inner::Hf(t) => t.id_to_token(id).is_some_and(|t| {
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
            Inner::Hf(t) => t.id_to_token(id),
            Inner::Sp { model, .. } => model.piece(id).map(str::to_string),
        }
    }

    /// The id of a token such as `</s>`, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        match &self.inner {
            Inner::Hf(t) => t.token_to_id(token),
            Inner::Sp { model, .. } => model.id(token),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Hf(t) => t.get_vocab_size(true),
            Inner::Sp { model, .. } => model.vocab_size(),
        }
    }

    /// Every token (added ones included) -> id.
    fn vocab(&self) -> HashMap<String, u32> {
        match &self.inner {
            Inner::Hf(t) => t.get_vocab(true),
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

/// tokenizer_config.json's `add_bos_token` (LLaMA's default, true, when the file or the key is
/// missing); a value that is not a boolean is an error naming the file.
fn add_bos_token(dir: &Path) -> Result<bool> {
    let path = dir.join("tokenizer_config.json");
    if !crate::util::optional_file(&path)? {
        return Ok(true);
    }
    let v: serde_json::Value = crate::util::read_json(&path)?;
    match v.get("add_bos_token") {
        None | Some(serde_json::Value::Null) => Ok(true),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(other) => Err(LabError::bad_checkpoint(
            &path,
            format!("add_bos_token is {other}, expected true or false"),
        )),
    }
}

/// Text of a growing token sequence, piece by piece, for printing while generating. A token is
/// not always text on its own (byte-fallback tokens make up one UTF-8 character together, and
/// SentencePiece's leading-space marker depends on what came before), so each push decodes the
/// whole sequence and hands out only what extends the text already given, holding back a
/// trailing U+FFFD (an incomplete character) until a later token completes it, and everything
/// while the newest token is a byte-fallback one: the ByteFallback decoder turns a whole run of
/// byte tokens into U+FFFDs when the run is not valid UTF-8, bytes before the bad one included,
/// so text given out in the middle of a run ("\n" before a broken character) could stop being a
/// prefix of the decode, and nothing after it would ever be given. A run ends at a non-byte
/// token, and text before that never changes. The pieces concatenate to `decode(all tokens)`
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
        if self.tok.is_byte_token(id) {
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
    /// tokens. The fixtures' tokenizer is GPT-2's byte-level kind, which has no byte tokens.
    fn llama_style_tokenizer(dir: &Path, pieces: &[&str]) -> TextTokenizer {
        let mut vocab = serde_json::Map::new();
        for (i, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
            vocab.insert(t.to_string(), i.into());
        }
        for b in 0..256 {
            vocab.insert(format!("<0x{b:02X}>"), (3 + b).into());
        }
        for (i, p) in pieces.iter().enumerate() {
            vocab.insert(p.to_string(), (259 + i).into());
        }
        let special = |id: u32, c: &str| {
            serde_json::json!({"id": id, "content": c, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        };
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "\u{2581}"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}]},
            "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "vocab": vocab, "merges": []}
        });
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, json.to_string()).unwrap();
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
        let run = |ids: &[u32]| {
            let mut st = TextStream::new(&tok).with_stop(Some("###"));
            let mut pieces = Vec::new();
            for &i in ids {
                pieces.push(st.push(i).unwrap());
                if st.stopped() {
                    break;
                }
            }
            pieces.push(st.finish().unwrap());
            (pieces, st.stopped())
        };
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
        // A broken run: the text before it is never taken back.
        let broken = [
            id("\u{2581}Sure"),
            id("<0x0A>"),
            id("<0xE2>"),
            id("\u{2581}Enjoy"),
        ];
        let pieces = stream(&broken);
        assert_eq!(pieces.concat(), tok.decode(&broken).unwrap(), "{pieces:?}");
        assert!(pieces.concat().starts_with("Sure\n"), "{pieces:?}");
        // Text encoded and streamed back is the text.
        let text = "Sure! Enjoy \u{2615}\n日本";
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(stream(&ids).concat(), text);
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
