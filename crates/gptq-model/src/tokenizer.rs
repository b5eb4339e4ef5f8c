//! `tokenizer.json` through the `tokenizers` crate.

use std::path::Path;

use crate::error::{ModelError, Result};

/// A Hugging Face fast tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("cannot load {}: {e}", path.display())))?;
        Ok(Self { inner })
    }

    /// Loads `DIR/tokenizer.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::TokenizerNotFound {
                dir: dir.to_path_buf(),
            });
        }
        Self::from_file(path)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether encoding with `add_special_tokens` adds anything (a BOS, say): that is what the
    /// tokenizer's post-processor decides, as in `transformers`' `tokenizer(text)`.
    pub fn adds_special_tokens(&self) -> Result<bool> {
        Ok(self.encode("a", true)?.len() != self.encode("a", false)?.len())
    }

    /// Token ids of `text`. `add_special_tokens: true` is what `transformers`' `tokenizer(text)`
    /// does (the post-processor may add BOS/EOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| ModelError::Tokenizer(format!("encoding failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a whole text file, encoded as one string (the GPTQ evaluation protocol).
    pub fn encode_file(
        &self,
        path: impl AsRef<Path>,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        self.encode(&text, add_special_tokens)
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| ModelError::Tokenizer(format!("decoding failed: {e}")))
    }
}
