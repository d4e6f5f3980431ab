//! The policy vocabulary: every check, response filter and upstream capability a rule may name.
//!
//! Invariants:
//! - A leaf: this module imports nothing else from the crate, so every other module may use it
//!   and it can never be part of an import cycle.
//! - Checks and filters are nested by family ([`Predicate::Resource`], [`Predicate::Batch`],
//!   [`Predicate::Account`]; [`ResponseFilter::Header`] … [`ResponseFilter::Recompute`]): the
//!   module that evaluates a family takes only its own words and matches them exhaustively, so it
//!   has no arm for another family's words.
//! - Each word's variant, its `routes.toml` name, `ALL`, `name` and `from_name` are generated
//!   from one list ([`words!`]); the families' `all`, `name` and `from_name` from the family list
//!   ([`families!`]): a word cannot be added without a name, nor left out of `ALL`.
//! - Each word has exactly one descriptor (argument kinds, whether admins are exempt, what it
//!   reads, which capability makes it unnecessary, whether shadow mode may forward it) returned
//!   by an exhaustive `match`: adding a word does not compile until its descriptor, and every
//!   `match` that evaluates it, handles it.
//! - Names are the `routes.toml` spelling; `from_name` is the only way a string becomes a word.

/// An enum of words with their `routes.toml` names: the variants, `ALL`, `name` and `from_name`
/// come from this one list.
macro_rules! words {
    ($(#[$meta:meta])* pub enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every word, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The `routes.toml` spelling.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The word spelt `name`, if there is one.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

/// An enum of families of words (each variant holds one [`words!`] enum): `all`, `name` and
/// `from_name` over every family come from this one list.
macro_rules! families {
    ($(#[$meta:meta])* pub enum $name:ident {
        $($(#[$vmeta:meta])* $family:ident($words:ident),)+
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $family($words),)+
        }

        impl $name {
            /// Every word of every family.
            pub fn all() -> impl Iterator<Item = $name> {
                std::iter::empty()
                    $(.chain($words::ALL.iter().map(|w| $name::$family(*w))))+
            }

            /// The `routes.toml` spelling.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$family(w) => w.name(),)+
                }
            }

            /// The word spelt `name`, in whichever family.
            pub fn from_name(name: &str) -> Option<Self> {
                None $(.or_else(|| $words::from_name(name).map($name::$family)))+
            }

            /// All names (for `check`, error messages and docs).
            pub fn names() -> impl Iterator<Item = &'static str> {
                Self::all().map($name::name)
            }
        }

        $(impl From<$words> for $name {
            fn from(w: $words) -> Self {
                $name::$family(w)
            }
        })+
    };
}

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
    /// Tokens carry `token_epoch` and a password change revokes older ones (6.14+).
    RevokesTokens,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Capability; 12] = [
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
        Capability::RevokesTokens,
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
            Capability::RevokesTokens => "revokes_tokens",
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

/// Whether shadow mode may forward a request this check refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shadow {
    /// A resource check: in shadow mode, a read (GET/HEAD) it refuses is logged as `would_deny`
    /// and forwarded.
    Dry,
    /// Admin-only, account, identity, group and list-scoping checks: enforced in shadow mode too
    /// (a dry run must not do what enforcement exists to prevent).
    Never,
}

/// One predicate's descriptor.
#[derive(Debug, Clone, Copy)]
pub struct PredicateInfo {
    /// Argument kinds by position; positions from `required` on are optional.
    pub args: &'static [ArgKind],
    pub required: usize,
    pub admin: AdminRule,
    pub body: BodyUse,
    pub shadow: Shadow,
    /// It reads the groups file's access sections (`[models]`, `[quotas]`), bound into the check
    /// when the table is compiled; such checks decide admin exemption from the file.
    pub access: bool,
}

words! {
    /// Who may read, write or own one resource (the check holds for every id its selector gives;
    /// true for admins).
    pub enum Resource {
        ImageRead => "image.read",
        ImageWrite => "image.write",
        ImageOwn => "image.own",
        ImageBoardWrite => "image.board_write",
        /// `_owner`: the same check without the public-board exception (a public board is
        /// readable by all, writable only by its owner).
        ImageWriteOwner => "image.write_owner",
        ImageBoardWriteOwner => "image.board_write_owner",
        VideoRead => "video.read",
        VideoWrite => "video.write",
        VideoOwn => "video.own",
        VideoBoardWrite => "video.board_write",
        VideoWriteOwner => "video.write_owner",
        VideoBoardWriteOwner => "video.board_write_owner",
        BoardRead => "board.read",
        BoardWrite => "board.write",
        BoardOwn => "board.own",
        WorkflowRead => "workflow.read",
        WorkflowOwn => "workflow.own",
        StylePresetRead => "style_preset.read",
        StylePresetWrite => "style_preset.write",
        QueueItemOwn => "queue_item.own",
        QueueItemOwnRoot => "queue_item.own_root",
        SystemPromptRead => "system_prompt.read",
        SystemPromptOwn => "system_prompt.own",
        BulkDownloadOwn => "bulk_download.own",
    }
}

words! {
    /// A batch to enqueue, as a whole (every media and board reference inside it).
    pub enum Batch {
        Allowed => "enqueue.allowed",
        /// Node boards must be the caller's own (a public board is not enough).
        AllowedOwner => "enqueue.allowed_owner",
    }
}

words! {
    /// The caller and the request's shape: login, admin-only switches, accounts, groups.
    pub enum Account {
        Authenticated => "authenticated",
        Admin => "admin",
        ImagesListScoped => "images.list_scoped",
        UserUpdateAllowed => "user.update_allowed",
        UserNotSystem => "user.not_system",
        UserKeepsAnAdmin => "user.keeps_an_admin",
        LoginNotSystem => "login.not_system",
        AdminIfEq => "admin_if_eq",
        AdminIfTrue => "admin_if_true",
        AdminUnlessUpstream => "admin_unless_upstream",
        CallerOr => "caller_or",
        CallerIn => "caller.in",
        QueueDefault => "queue.default",
    }
}

words! {
    /// Model access and generation quotas (the groups file's `[models]` and `[quotas]`).
    pub enum Model {
        EnqueueModelsAllowed => "enqueue.models_allowed",
        EnqueueWithinQuota => "enqueue.within_quota",
        RetryModelsAllowed => "retry.models_allowed",
        RetryWithinQuota => "retry.within_quota",
        Usable => "model.usable",
        Visible => "model.visible",
        UsableByName => "model.usable_by_name",
    }
}

families! {
    /// Every check a rule may name, by family.
    pub enum Predicate {
        Resource(Resource),
        Batch(Batch),
        Account(Account),
        Model(Model),
    }
}

const NONE: &[ArgKind] = &[];
const ONE: &[ArgKind] = &[ArgKind::Selector];

impl Predicate {
    /// The descriptor.
    pub fn info(self) -> PredicateInfo {
        use AdminRule::{Applies, Exempt};
        use ArgKind::{Capability as Cap, Group, Literal as Lit, Selector as Sel};
        let resource = PredicateInfo {
            args: ONE,
            required: 1,
            admin: Exempt,
            body: BodyUse::Value,
            shadow: Shadow::Dry,
            access: false,
        };
        let account = |args: &'static [ArgKind], required| PredicateInfo {
            args,
            required,
            admin: Applies,
            body: BodyUse::Value,
            shadow: Shadow::Never,
            access: false,
        };
        match self {
            Predicate::Resource(_) => resource,
            Predicate::Batch(Batch::Allowed | Batch::AllowedOwner) => PredicateInfo {
                body: BodyUse::Refs,
                ..resource
            },
            Predicate::Account(a) => match a {
                Account::Authenticated | Account::Admin => account(NONE, 0),
                // An admin-only listing unless the upstream scopes it: never a dry run.
                Account::ImagesListScoped => PredicateInfo {
                    shadow: Shadow::Never,
                    ..resource
                },
                Account::UserUpdateAllowed => account(&[Sel, Sel, Sel, Sel], 4),
                Account::UserNotSystem | Account::LoginNotSystem | Account::QueueDefault => {
                    account(ONE, 1)
                }
                Account::UserKeepsAnAdmin => account(&[Sel, Sel, Sel], 1),
                Account::AdminIfEq | Account::CallerOr => account(&[Sel, Lit], 2),
                Account::AdminIfTrue => account(&[Sel, Cap], 1),
                Account::AdminUnlessUpstream => account(&[Cap], 1),
                // Like a resource check, true for admins: a group widens access, it never
                // narrows what an admin may do.
                Account::CallerIn => PredicateInfo {
                    args: &[Group],
                    shadow: Shadow::Never,
                    ..resource
                },
            },
            // The access file says whether admins are exempt; never a dry run (a refused model
            // or quota must not run on the GPU because of a dry run).
            Predicate::Model(m) => PredicateInfo {
                body: match m {
                    Model::EnqueueModelsAllowed | Model::EnqueueWithinQuota => BodyUse::Batch,
                    Model::RetryModelsAllowed
                    | Model::RetryWithinQuota
                    | Model::Usable
                    | Model::Visible
                    | Model::UsableByName => BodyUse::Value,
                },
                access: true,
                ..account(ONE, 1)
            },
        }
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
    /// `Exempt`: admins see the upstream's answer as it is (lists); `Applies`: it runs for
    /// everyone (sessions, cache headers, owner records).
    pub admin: AdminRule,
}

words! {
    /// Headers of the answer, and what the request explains.
    pub enum Header {
        /// Private pixels must not land in shared caches.
        PrivateMedia => "private_media",
        /// 6.12's recall events name no owner: the request that caused them is noted.
        CorrelateRecall => "correlate_recall",
    }
}

words! {
    /// The guard's session cookie, re-minted tokens, revocation.
    pub enum Session {
        Login => "login_session",
        Refresh => "refresh_session",
        Logout => "logout_session",
        RevokeOnPasswordChange => "revoke_on_password_change",
        RevokeOnPasswordReset => "revoke_on_password_reset",
    }
}

words! {
    /// Owners InvokeAI does not keep, recorded in the ledger from a create's answer.
    pub enum Record {
        WorkflowOwner => "record_workflow_owner",
        StylePresetOwner => "record_style_preset_owner",
        BulkDownload => "record_bulk_download",
    }
}

impl Record {
    /// What it records.
    pub fn kind(self) -> RecordKind {
        match self {
            Record::WorkflowOwner => RecordKind::Workflow,
            Record::StylePresetOwner => RecordKind::StylePreset,
            Record::BulkDownload => RecordKind::BulkDownload,
        }
    }

    /// The field of the create's answer that names the new entity.
    pub fn id_field(self) -> &'static str {
        match self {
            Record::WorkflowOwner => "workflow_id",
            Record::StylePresetOwner => "id",
            Record::BulkDownload => "bulk_download_item_name",
        }
    }
}

words! {
    /// 6.12 lists and queue answers, filtered in place (spec §4 R3, R5–R8).
    pub enum List {
        OwnUncategorizedNames => "own_uncategorized_names",
        SanitizeQueueItems => "sanitize_queue_items",
        RedactQueueStatus => "redact_queue_status",
        OwnQueueCounts => "own_queue_counts",
    }
}

words! {
    /// Lists, counts and batches of 6.12/6.13 recomputed as main answers them.
    pub enum Recompute {
        OwnImagePage => "own_image_page",
        OwnImageNames => "own_image_names",
        ReadableImages => "readable_images",
        SkipForeignDeletes => "skip_foreign_deletes",
        VisibleWorkflowPage => "visible_workflow_page",
        VisibleWorkflowTags => "visible_workflow_tags",
        VisibleWorkflowTagCounts => "visible_workflow_tag_counts",
        VisibleWorkflowCategoryCounts => "visible_workflow_category_counts",
        VisibleStylePresets => "visible_style_presets",
        OwnDateCovers => "own_date_covers",
        OwnIntermediatesCount => "own_intermediates_count",
        OwnBoardMediaDelete => "own_board_media_delete",
    }
}

words! {
    /// Model records, keys and the starter catalogue per the groups file's `[models]` (no
    /// InvokeAI release restricts models per user).
    pub enum Models {
        Usable => "usable_models",
        UsableKeys => "usable_model_keys",
        UsableStarters => "usable_starter_models",
    }
}

families! {
    /// A response filter a rule may name, by family.
    pub enum ResponseFilter {
        Header(Header),
        Session(Session),
        Record(Record),
        List(List),
        Recompute(Recompute),
        Models(Models),
    }
}

impl ResponseFilter {
    /// The descriptor.
    pub fn info(self) -> FilterInfo {
        use Capability as C;
        let headers = FilterInfo {
            reads_body: false,
            request_fields: &[],
            records: None,
            upstream_does_it: None,
            correlates: None,
            rewrites_request: false,
            admin: AdminRule::Applies,
        };
        // A list (or count) answered as main answers it to the caller; admins see it whole.
        let list = |upstream_does_it| FilterInfo {
            reads_body: true,
            upstream_does_it: Some(upstream_does_it),
            admin: AdminRule::Exempt,
            ..headers
        };
        let rewrite = |upstream_does_it| FilterInfo {
            rewrites_request: true,
            ..list(upstream_does_it)
        };
        match self {
            ResponseFilter::Header(Header::PrivateMedia) => headers,
            ResponseFilter::Header(Header::CorrelateRecall) => FilterInfo {
                correlates: Some(Correlation::Recall),
                upstream_does_it: Some(C::AttributesSocketEvents),
                ..headers
            },
            ResponseFilter::Session(s) => match s {
                Session::Login => FilterInfo {
                    reads_body: true,
                    ..headers
                },
                Session::Refresh | Session::Logout => headers,
                Session::RevokeOnPasswordChange => FilterInfo {
                    request_fields: &["new_password"],
                    upstream_does_it: Some(C::RevokesTokens),
                    ..headers
                },
                Session::RevokeOnPasswordReset => FilterInfo {
                    request_fields: &["password"],
                    upstream_does_it: Some(C::RevokesTokens),
                    ..headers
                },
            },
            ResponseFilter::Record(r) => FilterInfo {
                reads_body: true,
                records: Some(r.kind()),
                upstream_does_it: match r {
                    Record::WorkflowOwner => Some(C::ScopesWorkflowLists),
                    Record::StylePresetOwner => Some(C::ScopesPresetLists),
                    Record::BulkDownload => None,
                },
                correlates: (r == Record::BulkDownload).then_some(Correlation::BulkDownload),
                ..headers
            },
            ResponseFilter::List(l) => list(match l {
                List::OwnUncategorizedNames => C::ScopesUncategorizedNames,
                List::SanitizeQueueItems | List::RedactQueueStatus | List::OwnQueueCounts => {
                    C::SanitizesQueue
                }
            }),
            ResponseFilter::Recompute(r) => match r {
                Recompute::OwnImagePage => rewrite(C::ScopesImageLists),
                Recompute::OwnImageNames => list(C::ScopesImageLists),
                Recompute::ReadableImages => list(C::FiltersImagesByNames),
                Recompute::SkipForeignDeletes => FilterInfo {
                    reads_body: false,
                    request_fields: &["image_names"],
                    ..rewrite(C::SkipsForeignImageDeletes)
                },
                Recompute::VisibleWorkflowPage => rewrite(C::ScopesWorkflowLists),
                Recompute::VisibleWorkflowTags
                | Recompute::VisibleWorkflowTagCounts
                | Recompute::VisibleWorkflowCategoryCounts => list(C::ScopesWorkflowLists),
                Recompute::VisibleStylePresets => list(C::ScopesPresetLists),
                // Every released version (6.12 to 6.14) picks each date's cover among all
                // users' images.
                Recompute::OwnDateCovers => FilterInfo {
                    upstream_does_it: None,
                    ..list(C::ScopesImageLists)
                },
                Recompute::OwnIntermediatesCount => list(C::ScopesIntermediatesCount),
                Recompute::OwnBoardMediaDelete => rewrite(C::ScopesBoardDeletes),
            },
            // Whom they restrict is the access file's to say (admins included or not).
            ResponseFilter::Models(_) => FilterInfo {
                reads_body: true,
                ..headers
            },
        }
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
        for p in Predicate::all() {
            assert!(seen.insert(p.name()), "duplicate {}", p.name());
            assert_eq!(Predicate::from_name(p.name()), Some(p));
            let info = p.info();
            assert!(info.required <= info.args.len());
        }
        for f in ResponseFilter::all() {
            assert!(seen.insert(f.name()), "duplicate {}", f.name());
            assert_eq!(ResponseFilter::from_name(f.name()), Some(f));
        }
        for c in Capability::ALL {
            assert!(seen.insert(c.name()));
            assert_eq!(Capability::from_name(c.name()), Some(c));
        }
        assert_eq!(Predicate::from_name("image.reed"), None);
        assert_eq!(Predicate::all().count(), 46);
        assert_eq!(ResponseFilter::all().count(), 29);
    }
}
