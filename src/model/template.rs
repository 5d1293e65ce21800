//! Prompt templates for Vicuna chat models. The wording is what the Vicuna releases were trained
//! on (FastChat's conversation templates): a prompt in the wrong template still runs but answers
//! worse, so the template is a flag, not a guess.
//! BOS (`<s>`) is not written here: the tokenizer's post-processor adds it.

use crate::{LabError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// The text as given.
    Raw,
    /// Vicuna v0 (March 2023): `### Human: ... ### Assistant:` after a system line.
    VicunaV0,
    /// Vicuna v1.1 and later (v1.3, v1.5): system line, then `USER: ... ASSISTANT:`.
    VicunaV11,
}

const SYSTEM_V0: &str = "A chat between a curious human and an artificial intelligence assistant. \
The assistant gives helpful, detailed, and polite answers to the human's questions.";
const SYSTEM_V11: &str = "A chat between a curious user and an artificial intelligence assistant. \
The assistant gives helpful, detailed, and polite answers to the user's questions.";

impl Template {
    /// "raw" | "v0" | "v1.1" (also "v1", "v1.3", "v1.5", which share v1.1's format).
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "raw" | "none" => Ok(Template::Raw),
            "v0" => Ok(Template::VicunaV0),
            "v1" | "v1.1" | "v1.3" | "v1.5" => Ok(Template::VicunaV11),
            other => Err(LabError::invalid(
                "--template",
                format!("'{other}': expected v0, v1.1 or raw"),
            )),
        }
    }

    /// Text that ends the assistant's turn besides EOS (FastChat's stop_str): v0's turns are
    /// separated by "###", and v0 weights go on into an invented "### Human:" turn after their
    /// answer rather than emit EOS.
    pub fn stop_str(&self) -> Option<&'static str> {
        match self {
            Template::VicunaV0 => Some("###"),
            Template::Raw | Template::VicunaV11 => None,
        }
    }

    /// The full prompt for one user turn, ending where the assistant's answer starts.
    pub fn render(&self, user: &str) -> String {
        match self {
            Template::Raw => user.to_string(),
            Template::VicunaV0 => format!("{SYSTEM_V0}\n### Human: {user}\n### Assistant:"),
            Template::VicunaV11 => format!("{SYSTEM_V11} USER: {user} ASSISTANT:"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v0_and_v11_put_the_message_between_the_role_markers() {
        let p = Template::VicunaV0.render("Hi there");
        assert!(p.starts_with("A chat between a curious human"));
        assert!(p.ends_with("\n### Human: Hi there\n### Assistant:"), "{p}");
        let p = Template::VicunaV11.render("Hi there");
        assert!(p.starts_with("A chat between a curious user"));
        assert!(p.ends_with("questions. USER: Hi there ASSISTANT:"), "{p}");
        assert_eq!(Template::Raw.render("Hi there"), "Hi there");
    }

    #[test]
    fn system_lines_are_fastchats_word_for_word() {
        // FastChat's one_shot (v0) and vicuna_v1.1 system messages, written out here so a
        // swapped word in either constant (they differ only in human/user) is caught.
        assert_eq!(
            Template::VicunaV0.render("Hi"),
            "A chat between a curious human and an artificial intelligence assistant. The \
             assistant gives helpful, detailed, and polite answers to the human's questions.\n\
             ### Human: Hi\n### Assistant:"
        );
        assert_eq!(
            Template::VicunaV11.render("Hi"),
            "A chat between a curious user and an artificial intelligence assistant. The \
             assistant gives helpful, detailed, and polite answers to the user's questions. \
             USER: Hi ASSISTANT:"
        );
    }

    #[test]
    fn parse_accepts_versions_and_names_the_flag_on_error() {
        assert_eq!(Template::parse("V1.1").unwrap(), Template::VicunaV11);
        assert_eq!(Template::parse("v1.5").unwrap(), Template::VicunaV11);
        assert_eq!(Template::parse("v0").unwrap(), Template::VicunaV0);
        assert_eq!(Template::parse("raw").unwrap(), Template::Raw);
        let e = Template::parse("alpaca").unwrap_err().to_string();
        assert!(e.contains("--template") && e.contains("alpaca"), "{e}");
    }
}
