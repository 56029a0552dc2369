//! TinyGPT-V prompt templates (spec §10) and the conversation renderer.
//!
//! The rendered prompt holds the literal placeholder `<ImageHere>` where the visual tokens go;
//! [`split_at_image`] cuts it there so each text piece is tokenized separately (no BOS).

use anyhow::{bail, Result};

pub const IMAGE_PLACEHOLDER: &str = "<ImageHere>";
pub const IMAGE_MESSAGE: &str = "<Img><ImageHere></Img>";

/// MiniGPT-4 / TinyGPT-V stage 1–3 system text (`CONV_VISION_Vicuna0`).
pub const STAGE3_SYSTEM: &str = "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to you. Please answer my questions.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// `{system}###Human: <Img><ImageHere></Img> {q}###Assistant: `
    Stage3,
    /// `<s>[INST] <Img><ImageHere></Img> {q} [/INST]` (`<s>` is literal text)
    Stage4,
    /// The prompt exactly as given.
    Raw,
}

impl std::str::FromStr for Template {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stage3" => Ok(Template::Stage3),
            "stage4" => Ok(Template::Stage4),
            "raw" => Ok(Template::Raw),
            _ => Err(format!(
                "unknown template '{s}' (expected auto, stage3, stage4 or raw)"
            )),
        }
    }
}

impl Template {
    pub fn name(self) -> &'static str {
        match self {
            Template::Stage3 => "stage3",
            Template::Stage4 => "stage4",
            Template::Raw => "raw",
        }
    }
}

/// Stage-4 task tags (`--task`).
pub fn task_tag(task: &str) -> Result<&'static str> {
    Ok(match task {
        "vqa" => "[vqa] ",
        "caption" => "[caption] ",
        "refer" => "[refer] ",
        "grounding" => "[grounding] ",
        "detection" => "[detection] ",
        "identify" => "[identify] ",
        _ => bail!("unknown task '{task}' (expected vqa, caption, refer, grounding, detection or identify)"),
    })
}

/// A conversation in the `SINGLE` separator style of `conversation.py`.
#[derive(Clone, Debug)]
pub struct Conversation {
    pub template: Template,
    /// (user message, assistant answer if given)
    pub turns: Vec<(String, Option<String>)>,
}

impl Conversation {
    pub fn new(template: Template) -> Conversation {
        Conversation {
            template,
            turns: Vec::new(),
        }
    }

    /// Adds a user turn; `with_image` puts `<Img><ImageHere></Img>` before the text (first turn).
    pub fn push_user(&mut self, text: &str, with_image: bool) {
        let msg = if with_image {
            format!("{IMAGE_MESSAGE} {text}")
        } else {
            text.to_string()
        };
        self.turns.push((msg, None));
    }

    /// Records the assistant's answer to the last user turn.
    pub fn set_answer(&mut self, answer: &str) {
        if let Some(last) = self.turns.last_mut() {
            last.1 = Some(answer.to_string());
        }
    }

    /// Renders the conversation up to the open assistant turn.
    pub fn render(&self) -> String {
        let (system, user, assistant, sep) = match self.template {
            Template::Stage3 => (STAGE3_SYSTEM, "Human: ", "Assistant: ", "###"),
            Template::Stage4 => ("", "<s>[INST] ", " [/INST]", ""),
            Template::Raw => {
                // raw: user texts and answers concatenated as given
                let mut s = String::new();
                for (u, a) in &self.turns {
                    s.push_str(u);
                    if let Some(a) = a {
                        s.push_str(a);
                    }
                }
                return s;
            }
        };
        let mut s = format!("{system}{sep}");
        for (u, a) in &self.turns {
            s.push_str(user);
            s.push_str(u);
            s.push_str(sep);
            s.push_str(assistant);
            if let Some(a) = a {
                s.push_str(a);
                s.push_str(sep);
            }
        }
        s
    }
}

/// Renders a single question for `template`, with or without an image.
pub fn render_single(template: Template, question: &str, with_image: bool) -> String {
    let mut c = Conversation::new(template);
    c.push_user(question, with_image && template != Template::Raw);
    c.render()
}

/// Splits a rendered prompt at the image placeholders: `pieces.len() == images + 1`.
pub fn split_at_image(prompt: &str) -> Vec<&str> {
    prompt.split(IMAGE_PLACEHOLDER).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage3_single_turn() {
        let p = render_single(Template::Stage3, "What is this?", true);
        assert_eq!(
            p,
            format!("{STAGE3_SYSTEM}###Human: <Img><ImageHere></Img> What is this?###Assistant: ")
        );
        assert_eq!(split_at_image(&p).len(), 2);
    }

    #[test]
    fn stage4_single_turn() {
        let p = render_single(Template::Stage4, "[vqa] What is this?", true);
        assert_eq!(
            p,
            "<s>[INST] <Img><ImageHere></Img> [vqa] What is this? [/INST]"
        );
    }

    #[test]
    fn stage3_multi_turn() {
        let mut c = Conversation::new(Template::Stage3);
        c.push_user("Q1", true);
        c.set_answer("A1");
        c.push_user("Q2", false);
        assert_eq!(
            c.render(),
            format!("{STAGE3_SYSTEM}###Human: <Img><ImageHere></Img> Q1###Assistant: A1###Human: Q2###Assistant: ")
        );
    }

    #[test]
    fn stage4_multi_turn() {
        let mut c = Conversation::new(Template::Stage4);
        c.push_user("Q1", true);
        c.set_answer("A1");
        c.push_user("Q2", false);
        assert_eq!(
            c.render(),
            "<s>[INST] <Img><ImageHere></Img> Q1 [/INST]A1<s>[INST] Q2 [/INST]"
        );
    }
}
