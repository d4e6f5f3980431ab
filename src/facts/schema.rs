//! Which InvokeAI schema is in front of us, by column probes (never by version strings).
//!
//! Invariant: every SQL statement the fact source runs is chosen from these capabilities, so a
//! query never names a column the database lacks.

use crate::rules::vocab::Capability;
use rusqlite::Connection;

/// Capabilities of the InvokeAI database, detected at start and after any schema change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    /// `MAX(version)` of `migrations` (27 = 6.12, 31/32 = 6.13, 33 = 6.14 / main).
    pub migration_version: i64,
    /// `boards.board_visibility` (6.13+); otherwise only `boards.is_public`.
    pub has_board_visibility: bool,
    /// `workflow_library.user_id` / `is_public` (6.13+); 6.12 workflows have no owner.
    pub has_workflow_owner: bool,
    /// `users.token_epoch` (6.14 / main): tokens carry a revocation epoch.
    pub has_token_epoch: bool,
    /// `videos` + `board_videos` (main).
    pub has_videos: bool,
    /// `system_prompts` (main).
    pub has_system_prompts: bool,
    /// `session_queue.root_item_id` (main): workflow-call chains.
    pub has_queue_root: bool,
    /// The multiuser tables exist (`users`, `app_settings`): InvokeAI ≥ 6.12.
    pub has_users: bool,
}

impl Schema {
    /// Probe a connection.
    pub fn detect(conn: &Connection) -> rusqlite::Result<Self> {
        let table_exists = |name: &str| -> rusqlite::Result<bool> {
            conn.query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [name],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
        };
        let has_column = |table: &str, column: &str| -> rusqlite::Result<bool> {
            let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
            let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
            for name in names {
                if name? == column {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        let migration_version = if table_exists("migrations")? {
            conn.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM migrations",
                [],
                |r| r.get(0),
            )?
        } else {
            0
        };
        Ok(Self {
            migration_version,
            has_board_visibility: has_column("boards", "board_visibility")?,
            has_workflow_owner: has_column("workflow_library", "user_id")?,
            has_token_epoch: has_column("users", "token_epoch")?,
            has_videos: table_exists("videos")? && table_exists("board_videos")?,
            has_system_prompts: table_exists("system_prompts")?,
            has_queue_root: has_column("session_queue", "root_item_id")?,
            has_users: table_exists("users")? && table_exists("app_settings")?,
        })
    }

    /// Whether the upstream enforces a behaviour itself (routes.toml stays version-agnostic: it
    /// names the behaviour, not a version).
    pub fn has(&self, capability: Capability) -> bool {
        match capability {
            // Fixes 2 and 4 of the hole list landed in 6.14 (schema 33).
            Capability::ScopesImageLists | Capability::ScopesBoardDeletes => {
                self.migration_version >= 33
            }
            // 6.13 scopes uncategorized deletes, queue sanitizing and preset lists by owner.
            Capability::ScopesUncategorizedDeletes
            | Capability::SanitizesQueue
            | Capability::ScopesPresetLists => self.has_board_visibility,
            Capability::ScopesWorkflowLists => self.has_workflow_owner,
            // 6.13+ return only the readable names of POST /images/images_by_names.
            Capability::FiltersImagesByNames | Capability::ScopesUncategorizedNames => {
                self.has_board_visibility
            }
            // main/6.14 skip names the caller may not write in POST /images/delete.
            Capability::SkipsForeignImageDeletes => self.migration_version >= 33,
            // 6.13 added `user_id` to batch, recall and bulk-download events.
            Capability::AttributesSocketEvents => self.has_board_visibility,
            // 6.13 counts a non-admin's own intermediates.
            Capability::ScopesIntermediatesCount => self.has_board_visibility,
            // 6.14 stamps tokens with the user's epoch and bumps it on a password change.
            Capability::RevokesTokens => self.has_token_epoch,
        }
    }

    /// A short human label for logs and `check`.
    pub fn label(&self) -> &'static str {
        if !self.has_users {
            "unsupported (no multiuser tables: InvokeAI < 6.12)"
        } else if self.has_token_epoch {
            "6.14/main (board visibility, workflow owners, token epochs)"
        } else if self.has_board_visibility {
            "6.13 (board visibility, workflow owners, no token epochs)"
        } else {
            "6.12 (private boards only, no workflow owners, no token epochs)"
        }
    }
}
