# Recipe: the members of the group "model-installers" (groups file) may install models, as admins may.
#   awk -f config/recipes/model-installers.awk routes.toml > routes.new.toml
# and run the guard with `groups = "groups.toml"` defining model-installers (config/groups.example.toml).
# Installers see every install job (InvokeAI lists them all, with their sources) and can install from
# any URL, Hugging Face repo or server path InvokeAI accepts; everything else about models stays admin-only.
BEGIN {
  n = split("models.install models.install_list models.install_get models.install_cancel " \
            "models.install_pause models.install_resume models.install_restart_failed " \
            "models.install_restart_file models.starter_models models.hugging_face", ids, " ")
  for (i = 1; i <= n; i++) pick[ids[i]] = 1
}
/^\[\[rule\]\]/ { id = "" }
/^id[ \t]*=/ { id = $0; sub(/^id[ \t]*=[ \t]*"/, "", id); sub(/".*/, "", id) }
(id in pick) && /^auth[ \t]*=/ {
  if ($0 !~ /"admin"/) { print "model-installers.awk: rule " id " is not admin-only; edit it by hand" > "/dev/stderr"; exit 1 }
  print "auth    = \"user\""
  print "require = [\"caller.in(\\\"model-installers\\\")\"]"
  done[id] = 1
  next
}
# The rule's own (empty) require list is replaced by the one above; any other is a conflict.
(id in pick) && /^require[ \t]*=/ {
  if ($0 !~ /=[ \t]*\[\][ \t]*$/) { print "model-installers.awk: rule " id " has checks; edit it by hand" > "/dev/stderr"; exit 1 }
  next
}
{ print }
END { for (k in pick) if (!(k in done)) { print "model-installers.awk: rule " k " not found" > "/dev/stderr"; exit 1 } }
