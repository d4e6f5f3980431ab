# Recipe: everything that changes something is admin-only; other users may only view.
#   awk -f config/recipes/viewer-only.awk routes.toml > routes.new.toml
# Every rule that accepts POST, PUT, PATCH or DELETE with auth user/media becomes auth = "admin", except
# the requests the web UI needs to view: the socket, logout, the media cookie, one's own password, reads
# sent as POST (images by names, downloads of what one may read, queue items by ids, model relationships)
# and the UI's own client state. Read checks stay as they are.
BEGIN {
  n = split("socketio auth.logout auth.media_cookie auth.me_update images.by_names images.download " \
            "queue.items_by_ids queue.item_summaries_by_ids model_relationships.batch " \
            "client_state.set_by_key client_state.delete_by_key client_state.delete", ids, " ")
  for (i = 1; i <= n; i++) keep[ids[i]] = 1
}
/^\[\[rule\]\]/ { id = ""; writes = 0 }
/^id[ \t]*=/ { id = $0; sub(/^id[ \t]*=[ \t]*"/, "", id); sub(/".*/, "", id) }
/^methods[ \t]*=/ { writes = ($0 ~ /"(POST|PUT|PATCH|DELETE)"/) }
/^auth[ \t]*=[ \t]*"(user|media)"/ && writes && !(id in keep) { sub(/"(user|media)"/, "\"admin\"") }
{ print }
