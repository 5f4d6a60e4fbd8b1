# Reads modules.dep; prints the files of the modules named in `want`
# (space-separated, - and _ alike) and of everything they depend on,
# dependencies first, each once: the order insmod needs. Fails naming a
# module modules.dep does not have.
#   awk -v want="virtio_blk ext4" -f modules.awk /lib/modules/REL/modules.dep
function modname(p) { sub(/.*\//, "", p); sub(/\.ko.*/, "", p); gsub(/-/, "_", p); return p }
BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) { gsub(/-/, "_", w[i]); order[i] = w[i] } }
{ sub(/:$/, "", $1); line[modname($1)] = $0 }
END {
	for (i = 1; i <= n; i++) {
		if (!(order[i] in line)) { print "no kernel module " order[i] > "/dev/stderr"; exit 1 }
		k = split(line[order[i]], f, " ")
		sub(/:$/, "", f[1])
		# modules.dep lists a module's dependencies the last-needed first.
		for (j = k; j >= 2; j--) if (!(f[j] in seen)) { seen[f[j]] = 1; print f[j] }
		if (!(f[1] in seen)) { seen[f[1]] = 1; print f[1] }
	}
}
