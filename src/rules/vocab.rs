//! The policy vocabulary: every check, response filter and upstream capability a rule may name.
//!
//! Invariants:
//! - A leaf: this module imports nothing else from the crate, so every other module may use it
//!   and it can never be part of an import cycle.
//! - Each word has exactly one descriptor (its name, argument kinds, whether admins are exempt,
//!   what it reads, which capability makes it unnecessary) returned by an exhaustive `match`:
//!   adding a variant does not compile until its descriptor, and every `match` that evaluates
//!   it, handles it.
//! - Names are the `routes.toml` spelling; `from_name` is the only way a string becomes a word.

/// A behaviour some InvokeAI versions enforce themselves (detected from the database schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// Image listings are scoped to what the caller may read (6.14+).
    ScopesImageLists,
    /// Board deletes with `include_images` delete only the caller's images (6.14+).
    ScopesBoardDeletes,
    /// Deleting uncategorized images deletes only the caller's (6.13+).
    ScopesUncategorizedDeletes,
    /// Queue items of other users are sanitized (6.13+).
    SanitizesQueue,
    /// Workflows have an owner column and lists are scoped (6.13+).
    ScopesWorkflowLists,
    /// Style presets have an owner and lists are scoped (6.13+).
    ScopesPresetLists,
    /// `POST /images/images_by_names` returns only readable names (6.13+).
    FiltersImagesByNames,
    /// `boards/none/image_names` lists only the caller's names (6.13+).
    ScopesUncategorizedNames,
    /// `POST /images/delete` skips names the caller may not write (6.14+).
    SkipsForeignImageDeletes,
    /// Socket events name their owner (`user_id` on batch, recall and bulk-download events, 6.13+).
    AttributesSocketEvents,
    /// `GET /images/intermediates` counts only the caller's intermediates (6.13+).
    ScopesIntermediatesCount,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Capability; 11] = [
        Capability::ScopesImageLists,
        Capability::ScopesBoardDeletes,
        Capability::ScopesUncategorizedDeletes,
        Capability::SanitizesQueue,
        Capability::ScopesWorkflowLists,
        Capability::ScopesPresetLists,
        Capability::FiltersImagesByNames,
        Capability::ScopesUncategorizedNames,
        Capability::SkipsForeignImageDeletes,
        Capability::AttributesSocketEvents,
        Capability::ScopesIntermediatesCount,
    ];

    /// The `routes.toml` name (`upstream.NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Capability::ScopesImageLists => "scopes_image_lists",
            Capability::ScopesBoardDeletes => "scopes_board_deletes",
            Capability::ScopesUncategorizedDeletes => "scopes_uncategorized_deletes",
            Capability::SanitizesQueue => "sanitizes_queue",
            Capability::ScopesWorkflowLists => "scopes_workflow_lists",
            Capability::ScopesPresetLists => "scopes_preset_lists",
            Capability::FiltersImagesByNames => "filters_images_by_names",
            Capability::ScopesUncategorizedNames => "scopes_uncategorized_names",
            Capability::SkipsForeignImageDeletes => "skips_foreign_image_deletes",
            Capability::AttributesSocketEvents => "attributes_socket_events",
            Capability::ScopesIntermediatesCount => "scopes_intermediates_count",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// All names, for error messages and docs.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|c| c.name()).collect()
    }
}

/// What one argument position of a check takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    /// A selector: `path.x`, `query.x`, `body.a[].b`, `form.f.x` (optionally `?`).
    Selector,
    /// A `"literal"` string.
    Literal,
    /// A `"capability"` name (see [`Capability`]).
    Capability,
    /// A `"group"` name of the groups file (bound when the table is compiled).
    Group,
}

/// How a `body.*` selector of a check is read from a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyUse {
    /// The selected value as it is.
    Value,
    /// Only the media and board references inside it (`enqueue.allowed` scans a whole batch).
    Refs,
    /// A batch scanned for model references and its queue-item count (`enqueue.models_allowed`,
    /// `enqueue.within_quota`): a streaming pass over the raw body, see `http::batch`.
    Batch,
}

/// Whether an admin passes a check without it being evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRule {
    /// Resource checks: true for admins, as in main (no database read).
    Exempt,
    /// Account protection and request-shape checks: evaluated for admins too.
    Applies,
}

/// One predicate's descriptor.
#[derive(Debug, Clone, Copy)]
pub struct PredicateInfo {
    pub name: &'static str,
    /// Argument kinds by position; positions from `required` on are optional.
    pub args: &'static [ArgKind],
    pub required: usize,
    pub admin: AdminRule,
    pub body: BodyUse,
    /// It reads the groups file's access sections (`[models]`, `[quotas]`), bound into the check
    /// when the table is compiled; such checks decide admin exemption from the file.
    pub access: bool,
}

/// Every check a rule may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Predicate {
    Authenticated,
    Admin,
    ImageRead,
    ImageWrite,
    ImageOwn,
    ImageBoardWrite,
    ImageWriteOwner,
    ImageBoardWriteOwner,
    BoardRead,
    BoardWrite,
    BoardOwn,
    WorkflowRead,
    WorkflowOwn,
    StylePresetRead,
    StylePresetWrite,
    QueueItemOwn,
    QueueItemOwnRoot,
    VideoRead,
    VideoWrite,
    VideoOwn,
    VideoBoardWrite,
    VideoWriteOwner,
    VideoBoardWriteOwner,
    SystemPromptRead,
    SystemPromptOwn,
    BulkDownloadOwn,
    EnqueueAllowed,
    EnqueueAllowedOwner,
    ImagesListScoped,
    UserUpdateAllowed,
    UserNotSystem,
    UserKeepsAnAdmin,
    LoginNotSystem,
    AdminIfEq,
    AdminIfTrue,
    AdminUnlessUpstream,
    CallerOr,
    CallerIn,
    QueueDefault,
    EnqueueModelsAllowed,
    EnqueueWithinQuota,
    RetryModelsAllowed,
    RetryWithinQuota,
    ModelUsable,
    ModelVisible,
    ModelUsableByName,
}

const NONE: &[ArgKind] = &[];
const ONE: &[ArgKind] = &[ArgKind::Selector];

impl Predicate {
    /// Every predicate.
    pub const ALL: [Predicate; 46] = [
        Predicate::Authenticated,
        Predicate::Admin,
        Predicate::ImageRead,
        Predicate::ImageWrite,
        Predicate::ImageOwn,
        Predicate::ImageBoardWrite,
        Predicate::ImageWriteOwner,
        Predicate::ImageBoardWriteOwner,
        Predicate::BoardRead,
        Predicate::BoardWrite,
        Predicate::BoardOwn,
        Predicate::WorkflowRead,
        Predicate::WorkflowOwn,
        Predicate::StylePresetRead,
        Predicate::StylePresetWrite,
        Predicate::QueueItemOwn,
        Predicate::QueueItemOwnRoot,
        Predicate::VideoRead,
        Predicate::VideoWrite,
        Predicate::VideoOwn,
        Predicate::VideoBoardWrite,
        Predicate::VideoWriteOwner,
        Predicate::VideoBoardWriteOwner,
        Predicate::SystemPromptRead,
        Predicate::SystemPromptOwn,
        Predicate::BulkDownloadOwn,
        Predicate::EnqueueAllowed,
        Predicate::EnqueueAllowedOwner,
        Predicate::ImagesListScoped,
        Predicate::UserUpdateAllowed,
        Predicate::UserNotSystem,
        Predicate::UserKeepsAnAdmin,
        Predicate::LoginNotSystem,
        Predicate::AdminIfEq,
        Predicate::AdminIfTrue,
        Predicate::AdminUnlessUpstream,
        Predicate::CallerOr,
        Predicate::CallerIn,
        Predicate::QueueDefault,
        Predicate::EnqueueModelsAllowed,
        Predicate::EnqueueWithinQuota,
        Predicate::RetryModelsAllowed,
        Predicate::RetryWithinQuota,
        Predicate::ModelUsable,
        Predicate::ModelVisible,
        Predicate::ModelUsableByName,
    ];

    /// The descriptor.
    pub fn info(self) -> PredicateInfo {
        use AdminRule::{Applies, Exempt};
        use ArgKind::{Capability as Cap, Group, Literal as Lit, Selector as Sel};
        use Predicate as P;
        let resource = |name| PredicateInfo {
            name,
            args: ONE,
            required: 1,
            admin: Exempt,
            body: BodyUse::Value,
            access: false,
        };
        let account = |name, args: &'static [ArgKind], required| PredicateInfo {
            name,
            args,
            required,
            admin: Applies,
            body: BodyUse::Value,
            access: false,
        };
        // Model access and quotas: the access file says whether admins are exempt.
        let access = |name, body| PredicateInfo {
            body,
            access: true,
            ..account(name, ONE, 1)
        };
        match self {
            P::Authenticated => account("authenticated", NONE, 0),
            P::Admin => account("admin", NONE, 0),
            P::ImageRead => resource("image.read"),
            P::ImageWrite => resource("image.write"),
            P::ImageOwn => resource("image.own"),
            P::ImageBoardWrite => resource("image.board_write"),
            // `_owner`: the same check without the public-board exception (a public board is
            // readable by all, writable only by its owner).
            P::ImageWriteOwner => resource("image.write_owner"),
            P::ImageBoardWriteOwner => resource("image.board_write_owner"),
            P::BoardRead => resource("board.read"),
            P::BoardWrite => resource("board.write"),
            P::BoardOwn => resource("board.own"),
            P::WorkflowRead => resource("workflow.read"),
            P::WorkflowOwn => resource("workflow.own"),
            P::StylePresetRead => resource("style_preset.read"),
            P::StylePresetWrite => resource("style_preset.write"),
            P::QueueItemOwn => resource("queue_item.own"),
            P::QueueItemOwnRoot => resource("queue_item.own_root"),
            P::VideoRead => resource("video.read"),
            P::VideoWrite => resource("video.write"),
            P::VideoOwn => resource("video.own"),
            P::VideoBoardWrite => resource("video.board_write"),
            P::VideoWriteOwner => resource("video.write_owner"),
            P::VideoBoardWriteOwner => resource("video.board_write_owner"),
            P::SystemPromptRead => resource("system_prompt.read"),
            P::SystemPromptOwn => resource("system_prompt.own"),
            P::BulkDownloadOwn => resource("bulk_download.own"),
            P::EnqueueAllowed => PredicateInfo {
                body: BodyUse::Refs,
                ..resource("enqueue.allowed")
            },
            P::EnqueueAllowedOwner => PredicateInfo {
                body: BodyUse::Refs,
                ..resource("enqueue.allowed_owner")
            },
            P::ImagesListScoped => resource("images.list_scoped"),
            P::UserUpdateAllowed => account("user.update_allowed", &[Sel, Sel, Sel, Sel], 4),
            P::UserNotSystem => account("user.not_system", ONE, 1),
            P::UserKeepsAnAdmin => account("user.keeps_an_admin", &[Sel, Sel, Sel], 1),
            P::LoginNotSystem => account("login.not_system", ONE, 1),
            P::AdminIfEq => account("admin_if_eq", &[Sel, Lit], 2),
            P::AdminIfTrue => account("admin_if_true", &[Sel, Cap], 1),
            P::AdminUnlessUpstream => account("admin_unless_upstream", &[Cap], 1),
            P::CallerOr => account("caller_or", &[Sel, Lit], 2),
            // Like a resource check, true for admins: a group widens access, it never narrows
            // what an admin may do.
            P::CallerIn => PredicateInfo {
                args: &[Group],
                ..resource("caller.in")
            },
            P::QueueDefault => account("queue.default", ONE, 1),
            P::EnqueueModelsAllowed => access("enqueue.models_allowed", BodyUse::Batch),
            P::EnqueueWithinQuota => access("enqueue.within_quota", BodyUse::Batch),
            P::RetryModelsAllowed => access("retry.models_allowed", BodyUse::Value),
            P::RetryWithinQuota => access("retry.within_quota", BodyUse::Value),
            P::ModelUsable => access("model.usable", BodyUse::Value),
            P::ModelVisible => access("model.visible", BodyUse::Value),
            P::ModelUsableByName => access("model.usable_by_name", BodyUse::Value),
        }
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// All names (for `check` and docs).
    pub fn names() -> impl Iterator<Item = &'static str> {
        Self::ALL.into_iter().map(Predicate::name)
    }
}

/// An owner the guard records because InvokeAI does not keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A workflow's creator (6.12 keeps no workflow owner).
    Workflow,
    /// A style preset's creator (6.12 stores every preset as `system`).
    StylePreset,
    /// Who requested a bulk-download zip.
    BulkDownload,
}

impl RecordKind {
    /// The name used in rule-test files (`[[record]] kind = ...`).
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Workflow => "workflow",
            RecordKind::StylePreset => "style_preset",
            RecordKind::BulkDownload => "bulk_download",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            RecordKind::Workflow,
            RecordKind::StylePreset,
            RecordKind::BulkDownload,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// Socket events the guard attributes to the HTTP request that caused them (6.12, spec §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Correlation {
    Recall,
    BulkDownload,
}

/// One response filter's descriptor.
#[derive(Debug, Clone, Copy)]
pub struct FilterInfo {
    pub name: &'static str,
    /// Reads the (2xx) response body.
    pub reads_body: bool,
    /// Top-level request body fields it reads.
    pub request_fields: &'static [&'static str],
    /// The owner it records in the ledger.
    pub records: Option<RecordKind>,
    /// Where the upstream does this itself, the filter has nothing to do.
    pub upstream_does_it: Option<Capability>,
    /// The socket events this request explains (noted before it is forwarded).
    pub correlates: Option<Correlation>,
    /// It may change what is sent upstream (another page, another endpoint, fewer names).
    pub rewrites_request: bool,
}

/// A response filter a rule may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseFilter {
    PrivateMedia,
    LoginSession,
    RefreshSession,
    LogoutSession,
    RecordWorkflowOwner,
    RecordStylePresetOwner,
    RecordBulkDownload,
    RevokeOnPasswordChange,
    RevokeOnPasswordReset,
    CorrelateRecall,
    OwnUncategorizedNames,
    SanitizeQueueItems,
    RedactQueueStatus,
    OwnQueueCounts,
    OwnImagePage,
    OwnImageNames,
    ReadableImages,
    SkipForeignDeletes,
    VisibleWorkflowPage,
    VisibleWorkflowTags,
    VisibleWorkflowTagCounts,
    VisibleWorkflowCategoryCounts,
    VisibleStylePresets,
    OwnDateCovers,
    OwnIntermediatesCount,
    OwnBoardMediaDelete,
    UsableModels,
    UsableModelKeys,
    UsableStarterModels,
}

impl ResponseFilter {
    /// Every filter.
    pub const ALL: [ResponseFilter; 29] = [
        ResponseFilter::PrivateMedia,
        ResponseFilter::LoginSession,
        ResponseFilter::RefreshSession,
        ResponseFilter::LogoutSession,
        ResponseFilter::RecordWorkflowOwner,
        ResponseFilter::RecordStylePresetOwner,
        ResponseFilter::RecordBulkDownload,
        ResponseFilter::RevokeOnPasswordChange,
        ResponseFilter::RevokeOnPasswordReset,
        ResponseFilter::CorrelateRecall,
        ResponseFilter::OwnUncategorizedNames,
        ResponseFilter::SanitizeQueueItems,
        ResponseFilter::RedactQueueStatus,
        ResponseFilter::OwnQueueCounts,
        ResponseFilter::OwnImagePage,
        ResponseFilter::OwnImageNames,
        ResponseFilter::ReadableImages,
        ResponseFilter::SkipForeignDeletes,
        ResponseFilter::VisibleWorkflowPage,
        ResponseFilter::VisibleWorkflowTags,
        ResponseFilter::VisibleWorkflowTagCounts,
        ResponseFilter::VisibleWorkflowCategoryCounts,
        ResponseFilter::VisibleStylePresets,
        ResponseFilter::OwnDateCovers,
        ResponseFilter::OwnIntermediatesCount,
        ResponseFilter::OwnBoardMediaDelete,
        ResponseFilter::UsableModels,
        ResponseFilter::UsableModelKeys,
        ResponseFilter::UsableStarterModels,
    ];

    /// The descriptor.
    pub fn info(self) -> FilterInfo {
        use ResponseFilter as F;
        let headers = |name| FilterInfo {
            name,
            reads_body: false,
            request_fields: &[],
            records: None,
            upstream_does_it: None,
            correlates: None,
            rewrites_request: false,
        };
        let body = |name, upstream_does_it| FilterInfo {
            reads_body: true,
            upstream_does_it,
            ..headers(name)
        };
        let record = |name, kind, upstream_does_it| FilterInfo {
            records: Some(kind),
            ..body(name, upstream_does_it)
        };
        let rewrite = |name, upstream_does_it| FilterInfo {
            rewrites_request: true,
            ..body(name, upstream_does_it)
        };
        match self {
            F::PrivateMedia => headers("private_media"),
            F::LoginSession => body("login_session", None),
            F::RefreshSession => headers("refresh_session"),
            F::LogoutSession => headers("logout_session"),
            F::RecordWorkflowOwner => record(
                "record_workflow_owner",
                RecordKind::Workflow,
                Some(Capability::ScopesWorkflowLists),
            ),
            F::RecordStylePresetOwner => record(
                "record_style_preset_owner",
                RecordKind::StylePreset,
                Some(Capability::ScopesPresetLists),
            ),
            F::RecordBulkDownload => FilterInfo {
                correlates: Some(Correlation::BulkDownload),
                ..record("record_bulk_download", RecordKind::BulkDownload, None)
            },
            F::CorrelateRecall => FilterInfo {
                correlates: Some(Correlation::Recall),
                upstream_does_it: Some(Capability::AttributesSocketEvents),
                ..headers("correlate_recall")
            },
            F::RevokeOnPasswordChange => FilterInfo {
                request_fields: &["new_password"],
                ..headers("revoke_on_password_change")
            },
            F::RevokeOnPasswordReset => FilterInfo {
                request_fields: &["password"],
                ..headers("revoke_on_password_reset")
            },
            F::OwnUncategorizedNames => body(
                "own_uncategorized_names",
                Some(Capability::ScopesUncategorizedNames),
            ),
            F::SanitizeQueueItems => body("sanitize_queue_items", Some(Capability::SanitizesQueue)),
            F::RedactQueueStatus => body("redact_queue_status", Some(Capability::SanitizesQueue)),
            F::OwnQueueCounts => body("own_queue_counts", Some(Capability::SanitizesQueue)),
            F::OwnImagePage => rewrite("own_image_page", Some(Capability::ScopesImageLists)),
            F::OwnImageNames => body("own_image_names", Some(Capability::ScopesImageLists)),
            F::ReadableImages => body("readable_images", Some(Capability::FiltersImagesByNames)),
            F::SkipForeignDeletes => FilterInfo {
                reads_body: false,
                request_fields: &["image_names"],
                ..rewrite(
                    "skip_foreign_deletes",
                    Some(Capability::SkipsForeignImageDeletes),
                )
            },
            F::VisibleWorkflowPage => rewrite(
                "visible_workflow_page",
                Some(Capability::ScopesWorkflowLists),
            ),
            F::VisibleWorkflowTags => body(
                "visible_workflow_tags",
                Some(Capability::ScopesWorkflowLists),
            ),
            F::VisibleWorkflowTagCounts => body(
                "visible_workflow_tag_counts",
                Some(Capability::ScopesWorkflowLists),
            ),
            F::VisibleWorkflowCategoryCounts => body(
                "visible_workflow_category_counts",
                Some(Capability::ScopesWorkflowLists),
            ),
            F::VisibleStylePresets => {
                body("visible_style_presets", Some(Capability::ScopesPresetLists))
            }
            // Every released version (6.12 to 6.14) picks each date's cover among all users' images.
            F::OwnDateCovers => body("own_date_covers", None),
            F::OwnIntermediatesCount => body(
                "own_intermediates_count",
                Some(Capability::ScopesIntermediatesCount),
            ),
            F::OwnBoardMediaDelete => rewrite(
                "own_board_media_delete",
                Some(Capability::ScopesBoardDeletes),
            ),
            // Model records, keys and the starter catalogue: per the groups file's [models]
            // (no InvokeAI release restricts models per user).
            F::UsableModels => body("usable_models", None),
            F::UsableModelKeys => body("usable_model_keys", None),
            F::UsableStarterModels => body("usable_starter_models", None),
        }
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether the filter reads the response body.
    pub fn needs_body(self) -> bool {
        self.info().reads_body
    }

    /// Whether the filter reads the JSON request body (the pipeline then buffers it).
    pub fn needs_request_body(self) -> bool {
        !self.info().request_fields.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for p in Predicate::ALL {
            assert!(seen.insert(p.name()), "duplicate {}", p.name());
            assert_eq!(Predicate::from_name(p.name()), Some(p));
            let info = p.info();
            assert!(info.required <= info.args.len());
        }
        for f in ResponseFilter::ALL {
            assert!(seen.insert(f.name()));
            assert_eq!(ResponseFilter::from_name(f.name()), Some(f));
        }
        for c in Capability::ALL {
            assert!(seen.insert(c.name()));
            assert_eq!(Capability::from_name(c.name()), Some(c));
        }
        assert_eq!(Predicate::from_name("image.reed"), None);
    }
}
