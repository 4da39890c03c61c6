//! The people who use a node: clinicians signing in to its local API, and the systems that
//! integrate with it.
//!
//! A person has a role (paramedic, GP, nurse, consultant), a professional registration and a
//! secret (a PIN or passphrase) kept only as an argon2id hash, sealed under the node's key with
//! the person's id, name, role and registration as its associated data: a copied database (a
//! backup, a disk image) gives no hash to search offline for a six-digit PIN, and a hash moved
//! to another row opens for no one. (Someone who can write the database file is not guarded
//! against here: API session rows are not sealed. The node's key and the files' 0600 are what
//! keep them out.) Signing in with it gives a short-lived API token.
//! An integrating system (a GP record system, an ePR) gets a long-lived token instead, shown
//! once when it is made. Only BLAKE3 hashes of tokens are stored, so a copied database gives
//! no way in.

use std::ops::{Deref, DerefMut};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rusqlite::{OptionalExtension, params};

use super::sql;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, append_audit, by};
use rusqlite::TransactionBehavior;

/// A person as the audit chain names them.
pub(crate) fn person_json(p: &Person) -> serde_json::Value {
    serde_json::json!({ "id": p.id, "name": p.name, "role": p.role, "registration": p.registration })
}
use sync_protocol::vocab::Role;

/// How long a signed-in person's API token lasts (a shift).
pub const SESSION_MS: i64 = 12 * 3600 * 1000;

/// What a person does; decides what they may do on which kind of node.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersonRole {
    /// Ambulance paramedic (on an edge).
    Paramedic,
    /// General practitioner (on an edge in a surgery).
    Gp,
    /// Nurse (on an edge).
    Nurse,
    /// Hospital consultant (on a desk).
    Consultant,
    /// An integrating system (GP record system, ambulance ePR), acting for the node.
    System,
}

impl PersonRole {
    /// Every role, as written.
    pub const NAMES: [&'static str; 5] = ["paramedic", "gp", "nurse", "consultant", "system"];

    /// Parses a role name.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "paramedic" => PersonRole::Paramedic,
            "gp" => PersonRole::Gp,
            "nurse" => PersonRole::Nurse,
            "consultant" => PersonRole::Consultant,
            "system" => PersonRole::System,
            _ => return Err(format!("unknown role {s:?}; expected one of: {}", Self::NAMES.join(", "))),
        })
    }

    /// The name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            PersonRole::Paramedic => "paramedic",
            PersonRole::Gp => "gp",
            PersonRole::Nurse => "nurse",
            PersonRole::Consultant => "consultant",
            PersonRole::System => "system",
        }
    }

    /// Whether a person of this role works on a node of `role` (an integrating system works
    /// on any).
    pub fn works_on(self, role: Role) -> bool {
        match self {
            PersonRole::Paramedic | PersonRole::Gp | PersonRole::Nurse => role == Role::Edge,
            PersonRole::Consultant => role == Role::Desk,
            PersonRole::System => true,
        }
    }
}

impl std::fmt::Display for PersonRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user of this node.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// Row id.
    pub id: i64,
    /// Name as shown to others.
    pub name: String,
    /// Role.
    pub role: PersonRole,
    /// Professional registration (GMC, NMC, HCPC), if any.
    pub registration: Option<String>,
}

/// What a new user needs.
#[derive(Debug, Clone)]
pub struct NewPerson {
    /// Name as shown to others (unique on this node).
    pub name: String,
    /// Role.
    pub role: PersonRole,
    /// Professional registration number.
    pub registration: Option<String>,
}

/// How a user proves who they are.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A PIN or passphrase (at least 6 characters), kept as an argon2id hash.
    Secret(String),
    /// A long-lived token, made here and shown once (for integrating systems).
    Token,
}

/// The shortest secret taken.
pub const MIN_SECRET: usize = 6;

fn hash_token(token: &str) -> Vec<u8> {
    blake3::hash(token.as_bytes()).as_bytes().to_vec()
}

fn new_token() -> Result<String, StoreError> {
    let mut b = [0u8; 32];
    crate::crypto::random_bytes(&mut b).map_err(|e| StoreError::Damaged(format!("no randomness: {e}")))?;
    Ok(format!("opt_{}", hex::encode(b)))
}

fn hash_secret(secret: &str) -> Result<String, StoreError> {
    let mut salt = [0u8; 16];
    crate::crypto::random_bytes(&mut salt).map_err(|e| StoreError::Damaged(format!("no randomness: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| StoreError::Damaged(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Damaged(format!("hashing a secret: {e}")))
}

/// The associated data of a person's sealed secret hash: whose it is.
pub(super) fn secret_aad(id: i64, name: &str, role: &str, registration: Option<&str>) -> Vec<u8> {
    let mut aad = b"outpost user secret v1".to_vec();
    aad.extend_from_slice(&id.to_be_bytes());
    for field in [name, role] {
        aad.extend_from_slice(&(field.len() as u64).to_be_bytes());
        aad.extend_from_slice(field.as_bytes());
    }
    match registration {
        Some(r) => {
            aad.push(1);
            aad.extend_from_slice(&(r.len() as u64).to_be_bytes());
            aad.extend_from_slice(r.as_bytes());
        }
        None => aad.push(0),
    }
    aad
}

/// Seals the secret hash of person `p` for the `users.secret` column.
pub(super) fn seal_secret(sealer: &crate::crypto::Sealer, p: &Person, phc: &str) -> Result<Vec<u8>, StoreError> {
    Ok(sealer.seal(&secret_aad(p.id, &p.name, p.role.as_str(), p.registration.as_deref()), phc.as_bytes())?)
}

/// A fixed hash checked when the name is unknown, so that a wrong name takes as long as a
/// wrong secret.
fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_secret("decoy secret").unwrap_or_default())
}

fn person_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Person> {
    let role: String = r.get(2)?;
    Ok(Person {
        id: r.get(0)?,
        name: r.get(1)?,
        role: PersonRole::parse(&role)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into()))?,
        registration: r.get(3)?,
    })
}

/// The people who use this node's local API and the systems that integrate with it: users,
/// their secrets and tokens, API sessions.
/// Reached through [`Store::people`] and [`Store::people_mut`].
#[derive(Debug)]
pub struct People<S>(pub(super) S);

impl<S: Deref<Target = Store>> People<S> {
    /// The users of this node.
    pub fn people(&self) -> Result<Vec<Person>, StoreError> {
        let conn = &self.0.conn;
        let mut stmt = conn
            .prepare_cached("SELECT id, name, role, registration FROM users WHERE disabled = 0 ORDER BY name")
            .map_err(sql("listing users"))?;
        stmt.query_map([], person_of)
            .map_err(sql("listing users"))?
            .collect::<Result<_, _>>()
            .map_err(sql("listing users"))
    }

    /// A person's stored secret hash, to check off the store thread ([`verify_secret`]); for
    /// an unknown name, a disabled user or one with no secret, a decoy hash that never matches
    /// anything sent, so that every answer takes as long.
    pub fn secret_of(&self, name: &str) -> Result<(Option<Person>, String), StoreError> {
        let row: Option<(Person, rusqlite::types::Value)> = self
            .0
            .conn
            .query_row(
                "SELECT id, name, role, registration, secret FROM users WHERE name = ?1 AND disabled = 0",
                [name],
                |r| Ok((person_of(r)?, r.get(4)?)),
            )
            .optional()
            .map_err(sql("signing in"))?;
        let decoyed = || (None, decoy().to_string());
        let (p, sealed) = match row {
            Some((p, rusqlite::types::Value::Blob(sealed))) => (p, sealed),
            // A person whose PIN a key rotation cleared (it did not open as theirs).
            Some((p, rusqlite::types::Value::Null)) if p.role != PersonRole::System => {
                tracing::warn!(
                    "user {:?} has no PIN (cleared by a key rotation: it had been changed outside outpost): set one \
                     with `outpost user set-pin --name {:?}`",
                    p.name,
                    p.name
                );
                return Ok(decoyed());
            }
            Some((_, rusqlite::types::Value::Null)) | None => return Ok(decoyed()),
            // Since schema 11 every secret is sealed: one in the clear was written by hand.
            Some((p, _)) => {
                tampered_secret(&p);
                return Ok(decoyed());
            }
        };
        let aad = secret_aad(p.id, &p.name, p.role.as_str(), p.registration.as_deref());
        match self.0.sealer.open("user secret", &aad, &sealed).ok().and_then(|phc| String::from_utf8(phc).ok()) {
            Some(phc) => Ok((Some(p), phc)),
            None => {
                tampered_secret(&p);
                Ok(decoyed())
            }
        }
    }

    /// The person a bearer token stands for, if it is valid now.
    pub fn person_by_token(&self, token: &str, now: i64) -> Result<Option<Person>, StoreError> {
        let conn = &self.0.conn;
        let h = hash_token(token);
        conn.query_row(
            "SELECT u.id, u.name, u.role, u.registration FROM users u WHERE u.disabled = 0 AND (u.token_hash = ?1
               OR u.id = (SELECT user_id FROM api_sessions WHERE token_hash = ?1 AND expires_ms > ?2))",
            params![h, now],
            person_of,
        )
        .optional()
        .map_err(sql("checking a token"))
    }
}

impl<S: DerefMut<Target = Store>> People<S> {
    /// Adds a user; with [`Credential::Token`], returns the token (shown once, stored hashed).
    /// Audited (`user.add`, naming the user and who added them).
    pub fn add_person(
        &mut self,
        new: &NewPerson,
        cred: &Credential,
        now: i64,
    ) -> Result<(Person, Option<String>), StoreError> {
        let store = &mut *self.0;
        let (secret, token) = match cred {
            Credential::Secret(s) => (Some(hash_secret(s)?), None),
            Credential::Token => (None, Some(new_token()?)),
        };
        let tx = store.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("adding a user"))?;
        // The row first, then its secret sealed with the row's id (in the same transaction).
        tx.execute(
            "INSERT INTO users (name, role, registration, secret, token_hash, created_ms) VALUES (?1, ?2, ?3, NULL, ?4, ?5)",
            params![new.name, new.role.as_str(), new.registration, token.as_deref().map(hash_token), now],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                StoreError::Duplicate(format!("a user named {:?}", new.name))
            }
            e => StoreError::Sqlite { context: "adding a user", source: e },
        })?;
        let person = Person {
            id: tx.last_insert_rowid(),
            name: new.name.clone(),
            role: new.role,
            registration: new.registration.clone(),
        };
        if let Some(phc) = &secret {
            tx.execute(
                "UPDATE users SET secret = ?2 WHERE id = ?1",
                params![person.id, seal_secret(&store.sealer, &person, phc)?],
            )
            .map_err(sql("adding a user"))?;
        }
        let detail = serde_json::json!({ "user": person_json(&person), "credential": if token.is_some() { "token" } else { "secret" } });
        append_audit(&tx, &store.sealer, &store.node, now, "user.add", None, by(&store.acting, Some(detail)))?;
        tx.commit().map_err(sql("adding a user"))?;
        Ok((person, token))
    }

    /// Opens an API session for a person whose secret was checked: a token valid for
    /// [`SESSION_MS`]; expired sessions are cleared.
    /// Audited (`api.sign_in`, by the person).
    pub fn open_api_session(&mut self, person: &Person, now: i64) -> Result<(String, i64), StoreError> {
        let store = &mut *self.0;
        let token = new_token()?;
        let expires = now.saturating_add(SESSION_MS);
        let tx = store.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("signing in"))?;
        tx.execute(
            "INSERT INTO api_sessions (token_hash, user_id, expires_ms) VALUES (?1, ?2, ?3)",
            params![hash_token(&token), person.id, expires],
        )
        .map_err(sql("signing in"))?;
        tx.execute("DELETE FROM api_sessions WHERE expires_ms < ?1", [now]).map_err(sql("signing in"))?;
        let detail = serde_json::json!({ "by": person_json(person), "expires_ms": expires });
        append_audit(&tx, &store.sealer, &store.node, now, "api.sign_in", None, Some(detail))?;
        tx.commit().map_err(sql("signing in"))?;
        Ok((token, expires))
    }

    /// Sets a person's new PIN or passphrase (a forgotten one, or one refused as changed outside
    /// outpost); their API sessions end. Returns whether an enabled person of that name exists
    /// (an integrating system has a token, not a secret). Audited (`user.set_pin`).
    pub fn set_secret(&mut self, name: &str, secret: &str, now: i64) -> Result<bool, StoreError> {
        let phc = hash_secret(secret)?;
        let store = &mut *self.0;
        let ctx = "setting a PIN";
        let tx = store.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql(ctx))?;
        let who: Option<Person> = tx
            .query_row(
                "SELECT id, name, role, registration FROM users WHERE name = ?1 AND disabled = 0 AND role != 'system'",
                [name],
                person_of,
            )
            .optional()
            .map_err(sql(ctx))?;
        let Some(who) = who else { return Ok(false) };
        tx.execute(
            "UPDATE users SET secret = ?2 WHERE id = ?1",
            params![who.id, seal_secret(&store.sealer, &who, &phc)?],
        )
        .map_err(sql(ctx))?;
        tx.execute("DELETE FROM api_sessions WHERE user_id = ?1", [who.id]).map_err(sql(ctx))?;
        let detail = serde_json::json!({ "user": person_json(&who) });
        append_audit(&tx, &store.sealer, &store.node, now, "user.set_pin", None, by(&store.acting, Some(detail)))?;
        tx.commit().map_err(sql(ctx))?;
        Ok(true)
    }

    /// Disables a user: their token and every API session end now. Returns whether the user
    /// existed. Audited (`user.disable`).
    pub fn disable_person(&mut self, name: &str, now: i64) -> Result<bool, StoreError> {
        let store = &mut *self.0;
        let ctx = "disabling a user";
        let tx = store.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql(ctx))?;
        let id: Option<i64> =
            tx.query_row("SELECT id FROM users WHERE name = ?1", [name], |r| r.get(0)).optional().map_err(sql(ctx))?;
        let Some(id) = id else { return Ok(false) };
        tx.execute("UPDATE users SET disabled = 1, token_hash = NULL, secret = NULL WHERE id = ?1", [id])
            .map_err(sql(ctx))?;
        tx.execute("DELETE FROM api_sessions WHERE user_id = ?1", [id]).map_err(sql(ctx))?;
        let detail = serde_json::json!({ "user": { "id": id, "name": name } });
        append_audit(&tx, &store.sealer, &store.node, now, "user.disable", None, by(&store.acting, Some(detail)))?;
        tx.commit().map_err(sql(ctx))?;
        Ok(true)
    }

    /// Ends an API session (signing out). Returns whether there was one (a system token is
    /// not a session: it ends only when its user is disabled).
    /// Audited (`api.sign_out`, by the person).
    pub fn sign_out(&mut self, token: &str, now: i64) -> Result<bool, StoreError> {
        let store = &mut *self.0;
        let ctx = "signing out";
        let tx = store.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql(ctx))?;
        let h = hash_token(token);
        let who: Option<Person> = tx
            .query_row(
                "SELECT u.id, u.name, u.role, u.registration FROM users u
                   JOIN api_sessions s ON s.user_id = u.id WHERE s.token_hash = ?1",
                [&h],
                person_of,
            )
            .optional()
            .map_err(sql(ctx))?;
        let Some(who) = who else { return Ok(false) };
        tx.execute("DELETE FROM api_sessions WHERE token_hash = ?1", [&h]).map_err(sql(ctx))?;
        let detail = serde_json::json!({ "by": person_json(&who) });
        append_audit(&tx, &store.sealer, &store.node, now, "api.sign_out", None, Some(detail))?;
        tx.commit().map_err(sql(ctx))?;
        Ok(true)
    }
}

/// A person's sealed secret does not open as theirs: moved from another row, written by hand,
/// or their name, role or registration changed outside outpost. Signing in is refused as for a
/// wrong PIN (the caller learns nothing more); the log tells the deployer what to do.
fn tampered_secret(p: &Person) {
    tracing::warn!(
        "the PIN record of user {:?} was changed outside outpost (it does not open as theirs under this node's \
         key), so no PIN signs them in: set a new one with `outpost user set-pin --name {:?}`",
        p.name,
        p.name
    );
}

/// Seals, in a migration, every secret hash kept in the clear before schema 11.
pub(super) fn seal_clear_secrets(
    tx: &rusqlite::Transaction<'_>,
    sealer: &crate::crypto::Sealer,
) -> Result<u64, StoreError> {
    let ctx = "sealing the staff's secrets";
    // The columns as stored (a role no longer known is sealed as it stands, not refused).
    type Row = (i64, String, String, Option<String>, String);
    let clear: Vec<Row> = {
        let mut stmt = tx
            .prepare("SELECT id, name, role, registration, secret FROM users WHERE typeof(secret) = 'text'")
            .map_err(sql(ctx))?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .map_err(sql(ctx))?
            .collect::<Result<_, _>>()
            .map_err(sql(ctx))?
    };
    for (id, name, role, registration, phc) in &clear {
        let sealed = sealer.seal(&secret_aad(*id, name, role, registration.as_deref()), phc.as_bytes())?;
        tx.execute("UPDATE users SET secret = ?2 WHERE id = ?1", params![id, sealed]).map_err(sql(ctx))?;
    }
    Ok(clear.len() as u64)
}

/// Checks a secret against a stored argon2id hash (tens of milliseconds of CPU: run it off the
/// store thread).
pub fn verify_secret(secret: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(secret.as_bytes(), &h).is_ok())
}

/// Warms the decoy hash (at startup), so the first unknown name takes no longer than others.
pub fn warm_decoy() {
    let _ = decoy();
}
