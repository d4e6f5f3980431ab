//! Resource checks (spec §0): who may read, write or own an image, board, workflow, preset,
//! queue item, system prompt or bulk download. Admins never reach this module (descriptor
//! `AdminRule::Exempt`). Every fact that decides is written to the trace.

use serde_json::Value;

use super::{forbidden, unavailable, FactSource, Outcome};
use crate::decision::DenyReason;
use crate::facts::ledger::Entry;
use crate::facts::{BoardFact, ImageFact, Visibility};
use crate::identity::Principal;
use crate::rules::vocab::{Capability, Predicate};

fn board_readable(board: &BoardFact, me: &str) -> bool {
    board.owner == me || matches!(board.visibility, Visibility::Shared | Visibility::Public)
}

fn board_writable(board: &BoardFact, me: &str) -> bool {
    board.owner == me || board.visibility == Visibility::Public
}

fn image_readable(img: &ImageFact, me: &str) -> bool {
    img.owner == me
        || img
            .board
            .as_ref()
            .is_some_and(|b| matches!(b.visibility, Visibility::Shared | Visibility::Public))
}

fn image_writable(img: &ImageFact, me: &str) -> bool {
    img.owner == me || img.board.as_ref().is_some_and(|b| board_writable(b, me))
}

fn board_note(b: &BoardFact) -> String {
    format!(
        "board {}: owner={} visibility={:?}",
        b.board_id, b.owner, b.visibility
    )
}

/// A board the predicate needs: unknown (or of unknown visibility) is 404, as main answers.
async fn known_board(
    id: &str,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Result<BoardFact, DenyReason> {
    match src.facts.board(id).await.map_err(unavailable)? {
        Some(b) if b.visibility != Visibility::Unknown => {
            facts.push(board_note(&b));
            Ok(b)
        }
        _ => {
            facts.push(format!("board {id}: not found"));
            Err(DenyReason::NotFound(format!("Board {id} not found")))
        }
    }
}

fn ok_or_forbidden(allowed: bool, detail: &str) -> Outcome {
    if allowed {
        Ok(())
    } else {
        Err(forbidden(detail))
    }
}

/// One resource check for one id.
pub(super) async fn check(
    predicate: Predicate,
    id: &str,
    me: &Principal,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    use Predicate as P;
    let uid = me.user_id.as_str();
    match predicate {
        P::ImageRead => image(Access::Read, id, uid, src, facts).await,
        P::ImageWrite => image(Access::Write, id, uid, src, facts).await,
        P::ImageOwn => image(Access::Own, id, uid, src, facts).await,
        P::ImageBoardWrite => image(Access::BoardWrite, id, uid, src, facts).await,
        P::ImageWriteOwner => image(Access::WriteOwner, id, uid, src, facts).await,
        P::ImageBoardWriteOwner => image(Access::BoardWriteOwner, id, uid, src, facts).await,
        P::VideoRead => video(Access::Read, id, uid, src, facts).await,
        P::VideoWrite => video(Access::Write, id, uid, src, facts).await,
        P::VideoOwn => video(Access::Own, id, uid, src, facts).await,
        P::VideoBoardWrite => video(Access::BoardWrite, id, uid, src, facts).await,
        P::VideoWriteOwner => video(Access::WriteOwner, id, uid, src, facts).await,
        P::VideoBoardWriteOwner => video(Access::BoardWriteOwner, id, uid, src, facts).await,
        P::BoardRead => {
            // `none` is the uncategorized pseudo-board: listing it is scoped by InvokeAI.
            if id == "none" {
                facts.push("board none: uncategorized (scoped upstream)".into());
                return Ok(());
            }
            let b = known_board(id, src, facts).await?;
            ok_or_forbidden(
                board_readable(&b, uid),
                "Not authorized to access this board",
            )
        }
        P::BoardWrite => {
            let b = known_board(id, src, facts).await?;
            ok_or_forbidden(
                board_writable(&b, uid),
                "Not authorized to modify this board",
            )
        }
        P::BoardOwn => {
            let b = known_board(id, src, facts).await?;
            ok_or_forbidden(b.owner == uid, "Not authorized to modify this board")
        }
        P::WorkflowRead | P::WorkflowOwn => workflow(predicate, id, uid, src, facts).await,
        P::StylePresetRead | P::StylePresetWrite => preset(predicate, id, uid, src, facts).await,
        P::QueueItemOwn | P::QueueItemOwnRoot => {
            let item_id: i64 = id.parse().map_err(|_| {
                DenyReason::Unprocessable(format!("queue item id '{id}' is not an integer"))
            })?;
            let item = src
                .facts
                .queue_item(item_id)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| {
                    DenyReason::NotFound(format!("Queue item with id {item_id} not found"))
                })?;
            let owner = match predicate {
                P::QueueItemOwn => &item.owner,
                _ => &item.root_owner,
            };
            facts.push(format!(
                "queue item {item_id}: owner={} root owner={}",
                item.owner, item.root_owner
            ));
            ok_or_forbidden(owner == uid, "Not authorized to modify this queue item")
        }
        P::SystemPromptRead | P::SystemPromptOwn => {
            let sp = src
                .facts
                .system_prompt(id)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| DenyReason::NotFound(format!("System prompt {id} not found")))?;
            facts.push(format!(
                "system prompt {id}: owner={} public={}",
                sp.owner, sp.is_public
            ));
            let allowed = sp.owner == uid || (predicate == P::SystemPromptRead && sp.is_public);
            ok_or_forbidden(allowed, "Not authorized to access this system prompt")
        }
        P::BulkDownloadOwn => {
            let owner = src
                .ledger
                .owner(Entry::BulkDownload, id)
                .await
                .map_err(unavailable)?;
            facts.push(format!(
                "bulk download {id}: requester={} (ledger)",
                owner.as_deref().unwrap_or("unknown")
            ));
            ok_or_forbidden(
                owner.as_deref() == Some(uid),
                "Not authorized to access this download",
            )
        }
        // Predicates that are not about one resource id: never dispatched here (see
        // `super::apply`); a denial, never an allow, if they ever were.
        P::Authenticated
        | P::Admin
        | P::EnqueueAllowed
        | P::EnqueueAllowedOwner
        | P::CallerIn
        | P::ImagesListScoped
        | P::UserUpdateAllowed
        | P::UserNotSystem
        | P::UserKeepsAnAdmin
        | P::LoginNotSystem
        | P::AdminIfEq
        | P::AdminIfTrue
        | P::AdminUnlessUpstream
        | P::CallerOr
        | P::QueueDefault
        | P::EnqueueModelsAllowed
        | P::EnqueueWithinQuota
        | P::RetryModelsAllowed
        | P::RetryWithinQuota
        | P::ModelUsable
        | P::ModelVisible
        | P::ModelUsableByName => Err(DenyReason::Unavailable(format!(
            "{} is not a resource check",
            predicate.name()
        ))),
    }
}

/// Who created an entity: the database's owner column where it has one, else the guard's ledger;
/// unknown creators are legacy (before the ledger) or orphans (since).
struct Creator {
    owner: Option<String>,
    from: &'static str,
    legacy: bool,
}

impl Creator {
    fn label(&self, created_at: &str) -> String {
        match (&self.owner, self.legacy) {
            (Some(o), _) => format!("{o} ({})", self.from),
            (None, true) => format!("unknown, legacy (created_at={created_at})"),
            (None, false) => format!("unknown, orphan (created_at={created_at})"),
        }
    }
}

async fn creator(
    src: FactSource<'_>,
    in_db: Option<String>,
    kind: Entry,
    id: &str,
    created_at: &str,
) -> Result<Creator, DenyReason> {
    let (owner, from) = match in_db {
        Some(o) => (Some(o), "database"),
        None => (
            src.ledger.owner(kind, id).await.map_err(unavailable)?,
            "ledger",
        ),
    };
    let legacy = owner.is_none() && src.ledger.is_legacy(created_at);
    Ok(Creator {
        owner,
        from,
        legacy,
    })
}

async fn workflow(
    predicate: Predicate,
    id: &str,
    uid: &str,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    let wf = src
        .facts
        .workflow(id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| DenyReason::NotFound(format!("Workflow {id} not found")))?;
    // 6.12 keeps no workflow owner: the guard's ledger may know the creator.
    let c = creator(src, wf.owner, Entry::Workflow, id, &wf.created_at).await?;
    facts.push(format!(
        "workflow {id}: owner={} public={} category={}",
        c.label(&wf.created_at),
        wf.is_public,
        wf.category
    ));
    let (owner, legacy) = (c.owner, c.legacy);
    let allowed = match (predicate, owner.as_deref()) {
        (Predicate::WorkflowRead, Some(o)) => o == uid || wf.is_public || wf.category == "default",
        // Unknown owner (6.12): created before the guard, like main's `system` workflows;
        // created since, its owner was lost (an orphan): admins only.
        (Predicate::WorkflowRead, None) => legacy,
        (_, Some(o)) => o == uid,
        (_, None) => false,
    };
    ok_or_forbidden(allowed, "Not authorized to access this workflow")
}

async fn preset(
    predicate: Predicate,
    id: &str,
    uid: &str,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    let sp = src
        .facts
        .preset(id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| DenyReason::NotFound(format!("Style preset {id} not found")))?;
    // 6.12 stores every preset as `system`: the guard's ledger may know the creator.
    let in_db = src
        .facts
        .schema()
        .has(Capability::ScopesPresetLists)
        .then(|| sp.owner.clone());
    let c = creator(src, in_db, Entry::StylePreset, id, &sp.created_at).await?;
    facts.push(format!(
        "style preset {id}: owner={} public={} type={}",
        c.label(&sp.created_at),
        sp.is_public,
        sp.kind
    ));
    let (owner, legacy) = (c.owner, c.legacy);
    let allowed = match (predicate, owner.as_deref()) {
        (Predicate::StylePresetRead, Some(o)) => sp.kind == "default" || sp.is_public || o == uid,
        // Unknown creator (6.12): from before the guard, readable by all and writable by admins;
        // created since (an orphan), admins only.
        (Predicate::StylePresetRead, None) => sp.kind == "default" || legacy,
        (_, Some(o)) => sp.kind != "default" && o == uid,
        (_, None) => false,
    };
    ok_or_forbidden(allowed, "Not authorized to access this style preset")
}

/// What a media check asks of an image or video.
#[derive(Debug, Clone, Copy)]
enum Access {
    Read,
    Write,
    Own,
    /// Moving it off its board: needs write access to that board.
    BoardWrite,
    /// `Write` without the public-board exception: owner of the media or of its board.
    WriteOwner,
    /// `BoardWrite` without the public-board exception: the board is the caller's own.
    BoardWriteOwner,
}

async fn image(
    access: Access,
    id: &str,
    me: &str,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    let img = src.facts.image(id).await.map_err(unavailable)?;
    media_check(access, img, me, "image", id, facts)
}

async fn video(
    access: Access,
    id: &str,
    me: &str,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    let vid = src.facts.video(id).await.map_err(unavailable)?;
    media_check(access, vid, me, "video", id, facts)
}

/// A media predicate decided on a fact already read (per-item list filters): the same rules as
/// [`check`] without the trace; `None` (unknown) is refused.
pub(super) fn media_permits(predicate: Predicate, fact: Option<ImageFact>, me: &str) -> bool {
    let access = match predicate {
        Predicate::ImageRead | Predicate::VideoRead => Access::Read,
        Predicate::ImageWrite | Predicate::VideoWrite => Access::Write,
        Predicate::ImageOwn | Predicate::VideoOwn => Access::Own,
        Predicate::ImageBoardWrite | Predicate::VideoBoardWrite => Access::BoardWrite,
        Predicate::ImageWriteOwner | Predicate::VideoWriteOwner => Access::WriteOwner,
        Predicate::ImageBoardWriteOwner | Predicate::VideoBoardWriteOwner => {
            Access::BoardWriteOwner
        }
        // Not a media predicate: never an allow.
        Predicate::BoardRead
        | Predicate::BoardWrite
        | Predicate::BoardOwn
        | Predicate::WorkflowRead
        | Predicate::WorkflowOwn
        | Predicate::StylePresetRead
        | Predicate::StylePresetWrite
        | Predicate::QueueItemOwn
        | Predicate::QueueItemOwnRoot
        | Predicate::SystemPromptRead
        | Predicate::SystemPromptOwn
        | Predicate::BulkDownloadOwn
        | Predicate::Authenticated
        | Predicate::Admin
        | Predicate::EnqueueAllowed
        | Predicate::EnqueueAllowedOwner
        | Predicate::CallerIn
        | Predicate::ImagesListScoped
        | Predicate::UserUpdateAllowed
        | Predicate::UserNotSystem
        | Predicate::UserKeepsAnAdmin
        | Predicate::LoginNotSystem
        | Predicate::AdminIfEq
        | Predicate::AdminIfTrue
        | Predicate::AdminUnlessUpstream
        | Predicate::CallerOr
        | Predicate::QueueDefault
        | Predicate::EnqueueModelsAllowed
        | Predicate::EnqueueWithinQuota
        | Predicate::RetryModelsAllowed
        | Predicate::RetryWithinQuota
        | Predicate::ModelUsable
        | Predicate::ModelVisible
        | Predicate::ModelUsableByName => return false,
    };
    media_check(access, fact, me, "image", "", &mut Vec::new()).is_ok()
}

fn media_check(
    access: Access,
    fact: Option<ImageFact>,
    me: &str,
    kind: &str,
    id: &str,
    facts: &mut Vec<String>,
) -> Outcome {
    let denied = || forbidden(format!("Not authorized to access {kind} {id}"));
    let Some(img) = fact else {
        facts.push(format!("{kind} {id}: not found"));
        // Main answers 403 (not 404) for unknown images to non-admins: no existence oracle.
        return Err(denied());
    };
    facts.push(format!(
        "{kind} {id}: owner={} board={}",
        img.owner,
        img.board.as_ref().map_or("none".to_owned(), |b| format!(
            "{} (owner={} visibility={:?})",
            b.board_id, b.owner, b.visibility
        ))
    ));
    let allowed = match access {
        Access::Read => image_readable(&img, me),
        Access::Write => image_writable(&img, me),
        Access::Own => img.owner == me,
        // No board, nothing to guard.
        Access::BoardWrite => img.board.as_ref().is_none_or(|b| board_writable(b, me)),
        Access::WriteOwner => img.owner == me || img.board.as_ref().is_some_and(|b| b.owner == me),
        Access::BoardWriteOwner => img.board.as_ref().is_none_or(|b| b.owner == me),
    };
    if allowed {
        Ok(())
    } else {
        Err(denied())
    }
}

/// Walk an enqueue_batch `batch`: every `image_name` must be readable, every node `board`
/// writable (closes hole 5: queue-time authorization absent before main).
pub(super) async fn enqueue_allowed(
    batch: &Value,
    public_boards_writable: bool,
    me: &Principal,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    let mut media = Vec::new();
    let mut boards = Vec::new();
    for part in ["graph", "data"] {
        if let Some(v) = batch.get(part) {
            collect_refs(v, &mut media, &mut boards);
        }
    }
    facts.push(format!(
        "batch references {} image/video(s), {} board(s)",
        media.len(),
        boards.len()
    ));
    for (predicate, name) in media {
        check(predicate, &name, me, src, facts).await?;
    }
    // Without the public-board exception, a node board must be the caller's own.
    let board_check = if public_boards_writable {
        Predicate::BoardWrite
    } else {
        Predicate::BoardOwn
    };
    for board in boards {
        if board != "none" {
            check(board_check, &board, me, src, facts).await?;
        }
    }
    Ok(())
}

fn collect_refs(v: &Value, media: &mut Vec<(Predicate, String)>, boards: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("image_name", Value::String(s)) => {
                        media.push((Predicate::ImageRead, s.clone()))
                    }
                    ("video_name", Value::String(s)) => {
                        media.push((Predicate::VideoRead, s.clone()))
                    }
                    ("board", Value::Object(b)) => {
                        if let Some(Value::String(id)) = b.get("board_id") {
                            boards.push(id.clone());
                        }
                    }
                    _ => collect_refs(value, media, boards),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_refs(i, media, boards)),
        _ => {}
    }
}
