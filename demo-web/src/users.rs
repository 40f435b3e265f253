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

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// Blank.
    #[error("name is empty")]
    Empty,
    /// Too long.
    #[error("name is longer than 32 characters")]
    TooLong,
    /// Control characters.
    #[error("name holds control characters")]
    Control,
}

/// Checks and trims a display name.
pub fn clean_name(name: &str) -> Result<String, NameError> {
    let name = name.trim();
    if name.is_empty() {
        Err(NameError::Empty)
    } else if name.chars().count() > MAX_NAME_CHARS {
        Err(NameError::TooLong)
    } else if name.chars().any(char::is_control) {
        Err(NameError::Control)
    } else {
        Ok(name.to_owned())
    }
}

impl Users {
    /// Signs in `name` with a new client id; returns the session token and the user.
    pub fn sign_in(&self, name: String) -> (String, User) {
        let id = format!("u-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let user = User { id, name };
        lock(&self.sessions).insert(token.clone(), user.clone());
        lock(&self.known).insert(user.id.clone(), user.clone());
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
    }
}
