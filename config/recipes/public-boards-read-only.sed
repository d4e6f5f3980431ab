# Recipe: public boards are read-only for everyone but their owner.
#   sed -E -f config/recipes/public-boards-read-only.sed routes.toml > routes.new.toml
# Every write check with the public-board exception becomes its `_owner` form (a public board still
# lets everyone read; only its owner writes to it). Admins are unaffected (resource checks).
s/\b(image|video)\.(board_)?write\(/\1.\2write_owner(/g
s/\benqueue\.allowed\(/enqueue.allowed_owner(/g
s/\bboard\.write\(/board.own(/g
