/*
 * A test-only NSS module that aliases user names the way sssd does with
 * case-insensitive names and a default domain: "ALICE", "Alice" and
 * "alice@corp" (any letter case) are all the account "alice", and
 * getpwnam answers with the canonical pw_name.
 *
 * The tests compile it with gcc and load it into the daemon through
 * nss_wrapper (NSS_WRAPPER_MODULE_SO_PATH, NSS_WRAPPER_MODULE_FN_PREFIX=
 * ykalias); see `Nss` in ykhsm-testkit/src/lib.rs. No passwd file can express such
 * aliases, which is why this exists.
 *
 * Accounts come from the passwd-format file named by YKALIAS_PASSWD, read at
 * every call (a test may change it while the daemon runs). While the file
 * named by YKALIAS_FAIL exists, every lookup fails with NSS_STATUS_UNAVAIL
 * and EIO: the system's user database is down, as with sssd stopped.
 */
#include <errno.h>
#include <nss.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define DOMAIN "@corp"

static int failing(int *errnop)
{
	const char *fail = getenv("YKALIAS_FAIL");
	if (fail != NULL && fail[0] != '\0' && access(fail, F_OK) == 0) {
		*errnop = EIO;
		return 1;
	}
	return 0;
}

/* Walks the accounts file; `match` picks the entry. */
static enum nss_status find(int (*match)(const struct passwd *, const void *),
			    const void *arg, struct passwd *result,
			    char *buffer, size_t buflen, int *errnop)
{
	const char *path = getenv("YKALIAS_PASSWD");
	struct passwd *pw = NULL;
	FILE *f;
	int rc;

	if (failing(errnop)) {
		return NSS_STATUS_UNAVAIL;
	}
	if (path == NULL || (f = fopen(path, "re")) == NULL) {
		*errnop = ENOENT;
		return NSS_STATUS_NOTFOUND;
	}
	while ((rc = fgetpwent_r(f, result, buffer, buflen, &pw)) == 0) {
		if (match(pw, arg)) {
			fclose(f);
			return NSS_STATUS_SUCCESS;
		}
	}
	fclose(f);
	if (rc == ERANGE) {
		*errnop = ERANGE;
		return NSS_STATUS_TRYAGAIN;
	}
	*errnop = ENOENT;
	return NSS_STATUS_NOTFOUND;
}

/* The name without a trailing "@corp" (any case), compared without case. */
static int same_name(const struct passwd *pw, const void *arg)
{
	const char *name = arg;
	size_t len = strlen(name);
	size_t dlen = strlen(DOMAIN);

	if (len > dlen && strcasecmp(name + len - dlen, DOMAIN) == 0) {
		len -= dlen;
	}
	return strlen(pw->pw_name) == len && strncasecmp(pw->pw_name, name, len) == 0;
}

static int same_uid(const struct passwd *pw, const void *arg)
{
	return pw->pw_uid == *(const uid_t *)arg;
}

enum nss_status _nss_ykalias_getpwnam_r(const char *name, struct passwd *result,
					char *buffer, size_t buflen, int *errnop)
{
	return find(same_name, name, result, buffer, buflen, errnop);
}

enum nss_status _nss_ykalias_getpwuid_r(uid_t uid, struct passwd *result,
					char *buffer, size_t buflen, int *errnop)
{
	return find(same_uid, &uid, result, buffer, buflen, errnop);
}
