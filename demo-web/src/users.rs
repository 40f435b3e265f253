//! Who is signed in: a display name per browser session, kept in the deployment's Redis so a
//! reload or a restart of demo-web signs nobody out. The demo's idea of accounts; a real
//! backend would have its own.

use imclient::ImClient;
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};

use crate::storage::{Storage, StorageError};

/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// How long a session lasts without signing in again, in seconds (the cookie's max-age too).
pub const SESSION_SECS: u64 = 30 * 24 * 3600;

/// A signed-in user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct User {
    /// Client id, used with imclient.
    pub id: String,
    /// Display name.
    pub name: String,
}

/// Sessions and users, in Redis: `session:{token}` (the cookie) names a user id, `user:{id}`
/// holds the user (kept after signing out, so old messages keep their names), and
/// `tags:{name}` the tags taken by that name.
#[derive(Debug, Clone)]
pub struct Users {
    storage: Storage,
}

/// Characters of the id the page shows beside a name (a tag, like `Ann #3f2a`), so that two
/// people with the same name can be told apart. [`Users::sign_in`] keeps the tags of
/// same-named users distinct.
pub const TAG_CHARS: usize = 4;

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// Blank, or nothing in it shows.
    #[error("Please type a name.")]
    Empty,
    /// Only marks, joiners and blank-looking characters.
    #[error("That name has nothing visible in it: please use letters, digits or symbols.")]
    Invisible,
    /// Too long: how many characters it has.
    #[error("Names can be at most {MAX_NAME_CHARS} characters; this one has {0}.")]
    TooLong(usize),
    /// Control characters (line breaks, tabs, escapes).
    #[error("Names cannot hold line breaks, tabs or other control characters.")]
    Control,
    /// Invisible formatting characters: zero-width ones hide a name inside another, and
    /// direction overrides make "Bob\u{202E}gnp.exe" show as "Bobexe.png".
    #[error(
        "Names cannot hold invisible formatting characters (U+{0:04X} here): please use letters, digits, spaces and symbols."
    )]
    Format(u32),
}

impl NameError {
    /// The machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            NameError::Empty | NameError::Invisible => "name_empty",
            NameError::TooLong(_) => "name_too_long",
            NameError::Control | NameError::Format(_) => "name_bad_characters",
        }
    }
}

/// Unicode's format characters (general category Cf): zero-width spaces and joiners, direction
/// marks, embeddings, overrides and isolates, the BOM, invisible operators, tags... They
/// change how the text around them shows without showing themselves. The zero-width joiner
/// (U+200D) is left out: emoji sequences need it; a name of joiners alone has nothing visible.
fn is_format(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B | 0x200C | 0x200E | 0x200F | 0x202A..=0x202E | 0x2060..=0x2064
        | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
}

/// Characters that show nothing by themselves: combining marks, variation selectors, the
/// joiner, and letters or symbols drawn blank (Hangul fillers, the blank Braille pattern).
fn shows_nothing(c: char) -> bool {
    c.is_whitespace()
        || matches!(c as u32,
            0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF
            | 0xFE00..=0xFE0F | 0xFE20..=0xFE2F | 0xE0100..=0xE01EF | 0x200D
            | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x2800 | 0x3164 | 0xFFA0)
}

/// Checks a display name and tidies it: trimmed, runs of spaces made one space.
pub fn clean_name(name: &str) -> Result<String, NameError> {
    if let Some(c) = name.chars().find(|c| is_format(*c)) {
        return Err(NameError::Format(c as u32));
    }
    if name.trim().chars().any(char::is_control) {
        return Err(NameError::Control);
    }
    let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
    if name.is_empty() {
        Err(NameError::Empty)
    } else if name.chars().all(shows_nothing) {
        Err(NameError::Invisible)
    } else if name.chars().count() > MAX_NAME_CHARS {
        Err(NameError::TooLong(name.chars().count()))
    } else {
        Ok(name)
    }
}

/// The tag the page shows for a client id.
pub fn tag_of(id: &str) -> &str {
    let start = id.len().saturating_sub(TAG_CHARS);
    id.get(start..).unwrap_or(id)
}

impl Users {
    /// Users kept in `storage`.
    pub fn new(storage: Storage) -> Self {
        Self { storage }
    }

    /// Signs `name` in; returns the session token and the user. A browser already signed in
    /// under the same name (a second tab, a form shown again) keeps its session and person
    /// rather than becoming a second person with the same name.
    pub async fn sign_in(
        &self,
        name: String,
        current: Option<&str>,
    ) -> Result<(String, User), StorageError> {
        if let Some(token) = current
            && let Some(user) = self.by_session(token).await?
            && user.name.to_lowercase() == name.to_lowercase()
        {
            return Ok((token.to_owned(), user));
        }
        let mut conn = self.storage.conn().await?;
        // A new id until its tag differs from every same-named user's (names compared
        // ignoring case, as people read them); SADD says whether the tag was free.
        let tags = self.storage.key(&format!("tags:{}", name.to_lowercase()));
        let id = loop {
            let id = format!("u-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
            let free: i64 = conn.sadd(&tags, tag_of(&id)).await?;
            if free == 1 {
                break id;
            }
        };
        let user = User { id, name };
        let token = uuid::Uuid::new_v4().simple().to_string();
        let json = serde_json::to_string(&user).map_err(StorageError::Json)?;
        let _: () = conn
            .set(self.storage.key(&format!("user:{}", user.id)), json)
            .await?;
        let _: () = conn
            .set_ex(self.session_key(&token), &user.id, SESSION_SECS)
            .await?;
        Ok((token, user))
    }

    fn session_key(&self, token: &str) -> String {
        self.storage.key(&format!("session:{token}"))
    }

    /// The user of a session token.
    pub async fn by_session(&self, token: &str) -> Result<Option<User>, StorageError> {
        if token.is_empty() {
            return Ok(None);
        }
        // The connection goes back to the pool before the next lookup takes one: holding one
        // while waiting for another deadlocks once every pooled connection is held so.
        let id: Option<String> = {
            let mut conn = self.storage.conn().await?;
            conn.get(self.session_key(token)).await?
        };
        match id {
            Some(id) => self.by_id(&id).await,
            None => Ok(None),
        }
    }

    /// Ends a session.
    pub async fn sign_out(&self, token: &str) -> Result<(), StorageError> {
        let mut conn = self.storage.conn().await?;
        let _: i64 = conn.del(self.session_key(token)).await?;
        Ok(())
    }

    /// A user by client id, signed in or not.
    pub async fn by_id(&self, id: &str) -> Result<Option<User>, StorageError> {
        Ok(self.by_ids(&[id]).await?.pop().flatten())
    }

    /// Users by client id, in the same order; `None` for an unknown id. One round trip
    /// (a pipeline of GETs: on a cluster the keys live in different slots).
    pub async fn by_ids<S: AsRef<str>>(
        &self,
        ids: &[S],
    ) -> Result<Vec<Option<User>>, StorageError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.get(self.storage.key(&format!("user:{}", id.as_ref())));
        }
        let mut conn = self.storage.conn().await?;
        let found: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
        Ok(found
            .into_iter()
            .map(|json| json.and_then(|j| serde_json::from_str(&j).ok()))
            .collect())
    }
}

/// The im client is where the storage comes from; kept here so main builds users in one line.
impl From<&ImClient> for Users {
    fn from(im: &ImClient) -> Self {
        Self::new(Storage::from(im))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(clean_name("  Ann "), Ok("Ann".to_owned()));
        assert_eq!(clean_name("   "), Err(NameError::Empty));
        assert_eq!(clean_name(&"x".repeat(33)), Err(NameError::TooLong(33)));
        assert_eq!(clean_name("a\u{7}b"), Err(NameError::Control));
        assert_eq!(clean_name("a\nb"), Err(NameError::Control));
        assert_eq!(clean_name(" Ann \u{3000}  Lee "), Ok("Ann Lee".to_owned()));
        assert_eq!(clean_name(&"x".repeat(32)), Ok("x".repeat(32)));
        assert_eq!(clean_name(&"é".repeat(32)), Ok("é".repeat(32)));
    }

    #[test]
    fn invisible_and_direction_changing_characters_are_refused() {
        assert_eq!(clean_name("\u{200B}"), Err(NameError::Format(0x200B)));
        assert_eq!(
            clean_name("Bob\u{202E}gnp.exe"),
            Err(NameError::Format(0x202E))
        );
        assert_eq!(clean_name("a\u{2066}b"), Err(NameError::Format(0x2066)));
        assert_eq!(clean_name("\u{FEFF}Ann"), Err(NameError::Format(0xFEFF)));
        assert_eq!(clean_name("\u{200D}\u{200D}"), Err(NameError::Invisible));
        assert_eq!(clean_name("\u{0301}"), Err(NameError::Invisible));
        assert_eq!(clean_name("\u{3164}"), Err(NameError::Invisible));
        // Emoji sequences joined with U+200D and right-to-left scripts are names like others.
        let family = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}";
        assert_eq!(clean_name(family), Ok(family.to_owned()));
        assert_eq!(
            clean_name("\u{05D3}\u{05E0}\u{05D4}"),
            Ok("\u{05D3}\u{05E0}\u{05D4}".to_owned())
        );
    }

    #[test]
    fn tags_are_the_ends_of_ids() {
        assert_eq!(tag_of("u-0123456789"), "6789");
    }
}
