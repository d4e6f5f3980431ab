//! Resource checks (spec §0): who may read, write or own an image, board, workflow, preset,
//! queue item, system prompt or bulk download. Admins never reach this module (descriptor
//! `AdminRule::Exempt`). Every fact that decides is written to the trace, naming the resource as
//! the caller lets it be shown (a query value never appears).
//!
//! Unknown resources: boards, workflows, presets, queue items and system prompts are 404; media
//! positively absent from the database is 404 on reads (InvokeAI 6.14.2) and 403 on mutations.

use serde_json::Value;

use super::{forbidden, FactSource, Outcome};
use crate::decision::Refusal;
use crate::facts::ledger::Entry;
use crate::facts::{BoardFact, ImageFact, Visibility};
use crate::identity::Principal;
use crate::rules::vocab::{Capability, Resource};

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

/// A board's facts; `shown` is how its id may appear in the log.
fn board_note(b: &BoardFact, shown: &str) -> String {
    format!(
        "board {shown}: owner={} visibility={:?}",
        b.owner, b.visibility
    )
}

/// A board the predicate needs: unknown (or of unknown visibility) is 404, as main answers.
async fn known_board(
    id: &str,
    shown: &str,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Result<BoardFact, Refusal> {
    match src.facts.board(id).await? {
        Some(b) if b.visibility != Visibility::Unknown => {
            facts.push(board_note(&b, shown));
            Ok(b)
        }
        _ => {
            facts.push(format!("board {shown}: not found"));
            Err(Refusal::NotFound(format!("Board {id} not found")))
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

/// One resource check for one id; its facts name the id as `shown` (a query value is never
/// logged).
pub(super) async fn check(
    predicate: Resource,
    id: &str,
    shown: &str,
    me: &Principal,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    use Resource as P;
    let uid = me.user_id.as_str();
    match predicate {
        P::ImageRead => image(Access::Read, id, shown, uid, src, facts).await,
        P::ImageWrite => image(Access::Write, id, shown, uid, src, facts).await,
        P::ImageOwn => image(Access::Own, id, shown, uid, src, facts).await,
        P::ImageBoardWrite => image(Access::BoardWrite, id, shown, uid, src, facts).await,
        P::ImageWriteOwner => image(Access::WriteOwner, id, shown, uid, src, facts).await,
        P::ImageBoardWriteOwner => image(Access::BoardWriteOwner, id, shown, uid, src, facts).await,
        P::VideoRead => video(Access::Read, id, shown, uid, src, facts).await,
        P::VideoWrite => video(Access::Write, id, shown, uid, src, facts).await,
        P::VideoOwn => video(Access::Own, id, shown, uid, src, facts).await,
        P::VideoBoardWrite => video(Access::BoardWrite, id, shown, uid, src, facts).await,
        P::VideoWriteOwner => video(Access::WriteOwner, id, shown, uid, src, facts).await,
        P::VideoBoardWriteOwner => video(Access::BoardWriteOwner, id, shown, uid, src, facts).await,
        P::BoardRead | P::BoardWrite | P::BoardOwn => {
            board(predicate, id, shown, uid, src, facts).await
        }
        P::WorkflowRead | P::WorkflowOwn => workflow(predicate, id, shown, uid, src, facts).await,
        P::StylePresetRead | P::StylePresetWrite => {
            preset(predicate, id, shown, uid, src, facts).await
        }
        P::QueueItemOwn | P::QueueItemOwnRoot => {
            queue_item(predicate, id, shown, uid, src, facts).await
        }
        P::SystemPromptRead | P::SystemPromptOwn => {
            let sp = src
                .facts
                .system_prompt(id)
                .await?
                .ok_or_else(|| Refusal::NotFound(format!("System prompt {id} not found")))?;
            facts.push(format!(
                "system prompt {shown}: owner={} public={}",
                sp.owner, sp.is_public
            ));
            let allowed = sp.owner == uid || (predicate == P::SystemPromptRead && sp.is_public);
            ok_or_forbidden(allowed, "Not authorized to access this system prompt")
        }
        P::BulkDownloadOwn => {
            let owner = src.ledger.owner(Entry::BulkDownload, id).await?;
            facts.push(format!(
                "bulk download {shown}: requester={} (ledger)",
                owner.as_deref().unwrap_or("unknown")
            ));
            ok_or_forbidden(
                owner.as_deref() == Some(uid),
                "Not authorized to access this download",
            )
        }
    }
}

/// `board.read`, `board.write`, `board.own` for one board (unknown: 404, as main answers).
async fn board(
    predicate: Resource,
    id: &str,
    shown: &str,
    uid: &str,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    // `none` is the uncategorized pseudo-board: listing it is scoped by InvokeAI.
    if predicate == Resource::BoardRead && id == "none" {
        facts.push("board none: uncategorized (scoped upstream)".into());
        return Ok(());
    }
    let b = known_board(id, shown, src, facts).await?;
    match predicate {
        Resource::BoardRead => ok_or_forbidden(
            board_readable(&b, uid),
            "Not authorized to access this board",
        ),
        Resource::BoardWrite => ok_or_forbidden(
            board_writable(&b, uid),
            "Not authorized to modify this board",
        ),
        _ => ok_or_forbidden(b.owner == uid, "Not authorized to modify this board"),
    }
}

/// `queue_item.own` (the item's owner) and `queue_item.own_root` (its workflow-call root's).
async fn queue_item(
    predicate: Resource,
    id: &str,
    shown: &str,
    uid: &str,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    let item_id: i64 = id
        .parse()
        .map_err(|_| Refusal::Unprocessable(format!("queue item id '{id}' is not an integer")))?;
    let item = src
        .facts
        .queue_item(item_id)
        .await?
        .ok_or_else(|| Refusal::NotFound(format!("Queue item with id {item_id} not found")))?;
    let owner = match predicate {
        Resource::QueueItemOwn => &item.owner,
        _ => &item.root_owner,
    };
    facts.push(format!(
        "queue item {shown}: owner={} root owner={}",
        item.owner, item.root_owner
    ));
    ok_or_forbidden(owner == uid, "Not authorized to modify this queue item")
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
) -> Result<Creator, Refusal> {
    let (owner, from) = match in_db {
        Some(o) => (Some(o), "database"),
        None => (src.ledger.owner(kind, id).await?, "ledger"),
    };
    let legacy = owner.is_none() && src.ledger.is_legacy(created_at);
    Ok(Creator {
        owner,
        from,
        legacy,
    })
}

async fn workflow(
    predicate: Resource,
    id: &str,
    shown: &str,
    uid: &str,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    let wf = src
        .facts
        .workflow(id)
        .await?
        .ok_or_else(|| Refusal::NotFound(format!("Workflow {id} not found")))?;
    // 6.12 keeps no workflow owner: the guard's ledger may know the creator.
    let c = creator(src, wf.owner, Entry::Workflow, id, &wf.created_at).await?;
    facts.push(format!(
        "workflow {shown}: owner={} public={} category={}",
        c.label(&wf.created_at),
        wf.is_public,
        wf.category
    ));
    let (owner, legacy) = (c.owner, c.legacy);
    let allowed = match (predicate, owner.as_deref()) {
        (Resource::WorkflowRead, Some(o)) => o == uid || wf.is_public || wf.category == "default",
        // Unknown owner (6.12): created before the guard, like main's `system` workflows;
        // created since, its owner was lost (an orphan): admins only. The shipped `default`
        // workflows stay readable even while the ledger has not adopted the database.
        (Resource::WorkflowRead, None) => legacy || wf.category == "default",
        (_, Some(o)) => o == uid,
        (_, None) => false,
    };
    ok_or_forbidden(allowed, "Not authorized to access this workflow")
}

async fn preset(
    predicate: Resource,
    id: &str,
    shown: &str,
    uid: &str,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    let sp = src
        .facts
        .preset(id)
        .await?
        .ok_or_else(|| Refusal::NotFound(format!("Style preset {id} not found")))?;
    // 6.12 stores every preset as `system`: the guard's ledger may know the creator.
    let in_db = src
        .facts
        .schema()
        .has(Capability::ScopesPresetLists)
        .then(|| sp.owner.clone());
    let c = creator(src, in_db, Entry::StylePreset, id, &sp.created_at).await?;
    facts.push(format!(
        "style preset {shown}: owner={} public={} type={}",
        c.label(&sp.created_at),
        sp.is_public,
        sp.kind
    ));
    let (owner, legacy) = (c.owner, c.legacy);
    let allowed = match (predicate, owner.as_deref()) {
        (Resource::StylePresetRead, Some(o)) => sp.kind == "default" || sp.is_public || o == uid,
        // Unknown creator (6.12): from before the guard, readable by all and writable by admins;
        // created since (an orphan), admins only.
        (Resource::StylePresetRead, None) => sp.kind == "default" || legacy,
        (_, Some(o)) => sp.kind != "default" && o == uid,
        (_, None) => false,
    };
    ok_or_forbidden(allowed, "Not authorized to access this style preset")
}

/// What a media check asks of an image or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
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
    shown: &str,
    me: &str,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    let img = src.facts.image(id).await?;
    let notes = Notes::new(facts, src.keep_all);
    media_check(access, img.as_deref(), me, Media::Image, (id, shown), notes)
}

async fn video(
    access: Access,
    id: &str,
    shown: &str,
    me: &str,
    src: FactSource<'_>,
    facts: &mut Vec<String>,
) -> Outcome {
    let vid = src.facts.video(id).await?;
    let notes = Notes::new(facts, src.keep_all);
    media_check(access, vid.as_deref(), me, Media::Video, (id, shown), notes)
}

/// A media predicate decided on a fact already read (per-item list filters): the same rules as
/// [`check`] without the trace; `None` (unknown) is refused.
pub(super) fn media_permits(access: Access, fact: Option<&ImageFact>, me: &str) -> bool {
    let mut none = Vec::new();
    media_check(
        access,
        fact,
        me,
        Media::Image,
        ("", ""),
        Notes::new(&mut none, false),
    )
    .is_ok()
}

/// Where a check writes the facts it read, and whether the facts of a check that held are kept
/// (`explain`) or only a refusal's (`serve`: the decision log shows the deciding check's).
struct Notes<'a> {
    facts: &'a mut Vec<String>,
    keep_held: bool,
}

impl<'a> Notes<'a> {
    fn new(facts: &'a mut Vec<String>, keep_held: bool) -> Self {
        Notes { facts, keep_held }
    }
}

/// Images and videos: the same checks, their own words.
#[derive(Debug, Clone, Copy)]
enum Media {
    Image,
    Video,
}

impl Media {
    fn noun(self) -> &'static str {
        match self {
            Media::Image => "image",
            Media::Video => "video",
        }
    }

    /// What InvokeAI 6.14.2 answers a read of media that is gone.
    fn gone(self) -> Refusal {
        Refusal::NotFound(
            match self {
                Media::Image => "Image not found",
                Media::Video => "Video not found",
            }
            .into(),
        )
    }
}

/// `(id, shown)`: the media name, and how it may appear in the facts.
fn media_check(
    access: Access,
    fact: Option<&ImageFact>,
    me: &str,
    media: Media,
    (id, shown): (&str, &str),
    notes: Notes<'_>,
) -> Outcome {
    let facts = notes.facts;
    let kind = media.noun();
    let denied = || forbidden(format!("Not authorized to access {kind} {id}"));
    let Some(img) = fact else {
        facts.push(format!("{kind} {shown}: not found"));
        return Err(match access {
            // Gone is not denied (6.14.2's `_assert_image_record_exists`): the web UI drops a
            // reference to media that answers 404 and keeps one that answers 403. The fact is a
            // positive absence (no row); a database error never gets here (503).
            Access::Read => media.gone(),
            // Mutations keep 403, as in 6.14.2 (its ownership checks refuse before any lookup).
            Access::Write
            | Access::Own
            | Access::BoardWrite
            | Access::WriteOwner
            | Access::BoardWriteOwner => denied(),
        });
    };
    let allowed = match access {
        Access::Read => image_readable(img, me),
        Access::Write => image_writable(img, me),
        Access::Own => img.owner == me,
        // No board, nothing to guard.
        Access::BoardWrite => img.board.as_ref().is_none_or(|b| board_writable(b, me)),
        Access::WriteOwner => img.owner == me || img.board.as_ref().is_some_and(|b| b.owner == me),
        Access::BoardWriteOwner => img.board.as_ref().is_none_or(|b| b.owner == me),
    };
    // The fact that decided, written only where it is read: a refusal's (the decision log) or
    // every check's under `explain` (formatting it for an allow nobody reads is most of a check's
    // cost).
    if !allowed || notes.keep_held {
        facts.push(format!(
            "{kind} {shown}: owner={} board={}",
            img.owner,
            img.board.as_ref().map_or("none".to_owned(), |b| format!(
                "{} (owner={} visibility={:?})",
                b.board_id, b.owner, b.visibility
            ))
        ));
    }
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
        check(predicate, &name, &name, me, src, facts).await?;
    }
    // Without the public-board exception, a node board must be the caller's own.
    let board_check = if public_boards_writable {
        Resource::BoardWrite
    } else {
        Resource::BoardOwn
    };
    for board in boards {
        if board != "none" {
            check(board_check, &board, &board, me, src, facts).await?;
        }
    }
    Ok(())
}

fn collect_refs(v: &Value, media: &mut Vec<(Resource, String)>, boards: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("image_name", Value::String(s)) => {
                        media.push((Resource::ImageRead, s.clone()))
                    }
                    ("video_name", Value::String(s)) => {
                        media.push((Resource::VideoRead, s.clone()))
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
