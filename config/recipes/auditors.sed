# Recipe: auditors read every board and image.
#   sed -E -f config/recipes/auditors.sed routes.toml > routes.new.toml
# Every read check of a board or an image gets an alternative: the owner (and whoever the board is
# shared with) still passes the resource check; a member of the "auditors" group (groups file) passes
# instead. Writes are unchanged. The refusal for everyone else is the resource check's own (403/404).
# The entry becomes a TOML literal string ('...') so the group name keeps its double quotes.
s/"((board|image)\.read\([^)"]*\))"/'\1 or caller.in("auditors")'/g
