/* crypt() for the static dropbear of scripts/build-static-tools.
 *
 * Debian's musl ships no crypt() (dropped in its 1.1.24 packaging), and dropbear accepts -B and
 * -s, the options the init's cvmssh passes, only when it is built with password logins, which
 * call crypt(). The initramfs never holds a password hash: cvmssh gives root a blank password
 * (-B: the SSH "none" method lets root in without crypt()) or "*" (-s: keys only). So this
 * crypt() knows no hash method and refuses every salt, as glibc's does for "*": dropbear then
 * rejects the password login ("account is locked"). */
#include <errno.h>
#include <stddef.h>
#include <unistd.h>

char *crypt(const char *key, const char *salt)
{
	(void)key;
	(void)salt;
	errno = EINVAL;
	return NULL;
}
