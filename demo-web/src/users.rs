//! Who is signed in: a display name per browser session, kept in memory. The demo's idea of
//! accounts; a real backend would have its own.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// A signed-in user.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct User {
    /// Client id, used with imclient.
    pub id: String,
    /// Display name.
    pub name: String,
}

/// Sessions and users, in memory.
#[derive(Debug, Default)]
pub struct Users {
    /// Session token (the cookie) to user. std Mutex: never held across an await.
    sessions: Mutex<HashMap<String, User>>,
    /// Client id to user, including signed-out users, so old messages keep their names.
    known: Mutex<HashMap<String, User>>,
}

/// Characters of the id the page shows beside a name (a tag, like `Ann #3f2a`), so that two
/// people with the same name can be told apart. [`Users::sign_in`] keeps the tags of
/// same-named users distinct.
pub const TAG_CHARS: usize = 4;

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// Blank, or nothing in it shows.
    #[error("name is empty")]
    Empty,
    /// Only marks, joiners and blank-looking characters.
    #[error("name has no visible characters")]
    Invisible,
    /// Too long.
    #[error("name is longer than {MAX_NAME_CHARS} characters")]
    TooLong,
    /// Control characters (line breaks, tabs, escapes).
    #[error("name holds control characters")]
    Control,
    /// Invisible formatting characters: zero-width ones hide a name inside another, and
    /// direction overrides make "Bob\u{202E}gnp.exe" show as "Bobexe.png".
    #[error(
        "name holds an invisible formatting character (U+{0:04X}); use letters, digits, spaces and symbols"
    )]
    Format(u32),
}

impl NameError {
    /// The machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            NameError::Empty | NameError::Invisible => "name_empty",
            NameError::TooLong => "name_too_long",
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
        Err(NameError::TooLong)
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
    /// Signs in `name` with a new client id; returns the session token and the user.
    pub fn sign_in(&self, name: String) -> (String, User) {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let user = {
            let mut known = lock(&self.known);
            // A new id until its tag differs from every same-named user's (names compared
            // ignoring case, as people read them).
            let id = loop {
                let id = format!("u-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
                let clash = known.values().any(|u| {
                    tag_of(&u.id) == tag_of(&id) && u.name.to_lowercase() == name.to_lowercase()
                });
                if !clash {
                    break id;
                }
            };
            let user = User { id, name };
            known.insert(user.id.clone(), user.clone());
            user
        };
        lock(&self.sessions).insert(token.clone(), user.clone());
        (token, user)
    }

    /// The user of a session token.
    pub fn by_session(&self, token: &str) -> Option<User> {
        lock(&self.sessions).get(token).cloned()
    }

    /// Ends a session; returns its user.
    pub fn sign_out(&self, token: &str) -> Option<User> {
        lock(&self.sessions).remove(token)
    }

    /// A user by client id, signed in or not.
    pub fn by_id(&self, id: &str) -> Option<User> {
        lock(&self.known).get(id).cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(clean_name("  Ann "), Ok("Ann".to_owned()));
        assert_eq!(clean_name("   "), Err(NameError::Empty));
        assert_eq!(clean_name(&"x".repeat(33)), Err(NameError::TooLong));
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
    fn same_named_users_get_different_tags() {
        let users = Users::default();
        let mut tags = std::collections::HashSet::new();
        for i in 0..300 {
            let name = if i % 2 == 0 { "Ann" } else { "ann" };
            let (_, user) = users.sign_in(name.to_owned());
            assert!(tags.insert(tag_of(&user.id).to_owned()), "tag repeated");
        }
        assert_eq!(tag_of("u-0123456789"), "6789");
    }
}
