/* ECDSA P-256 keys and signatures through mbedTLS 2.28: the only file that
 * includes mbedTLS headers (one wrapper per third-party library). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>

#include <flotilla/cleanup.h>
#include <flotilla/crypto.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/hash.h>

#define PUBKEY_DER_MAX 200 /* P-256 SubjectPublicKeyInfo is 91 bytes */
#define PEM_MAX 1024

struct ota_key {
	mbedtls_pk_context pk;
	bool has_private;
	/* mbedTLS caches a precomputed table inside the group on the first
	 * multiplication by the generator, so even verify writes into the key:
	 * serialize every use of pk. */
	pthread_mutex_t lock;
	char keyid[OTA_KEYID_HEX_LEN + 1];
};

static const char drbg_pers[] = "flotilla-ota-crypto";

/* A DRBG seeded from the OS entropy source. */
struct rng {
	mbedtls_entropy_context entropy;
	mbedtls_ctr_drbg_context drbg;
};

static int rng_init(struct rng *r)
{
	mbedtls_entropy_init(&r->entropy);
	mbedtls_ctr_drbg_init(&r->drbg);
	if (mbedtls_ctr_drbg_seed(&r->drbg, mbedtls_entropy_func, &r->entropy,
				  (const unsigned char *)drbg_pers, sizeof(drbg_pers) - 1) != 0) {
		mbedtls_ctr_drbg_free(&r->drbg);
		mbedtls_entropy_free(&r->entropy);
		return -EIO;
	}
	return 0;
}

static void rng_free(struct rng *r)
{
	mbedtls_ctr_drbg_free(&r->drbg);
	mbedtls_entropy_free(&r->entropy);
}

static struct ota_key *key_alloc(void)
{
	struct ota_key *k = calloc(1, sizeof(*k));
	if (!k)
		return NULL;
	mbedtls_pk_init(&k->pk);
	pthread_mutex_init(&k->lock, NULL);
	return k;
}

void ota_key_free(struct ota_key *key)
{
	if (!key)
		return;
	mbedtls_pk_free(&key->pk); /* zeroizes */
	pthread_mutex_destroy(&key->lock);
	free(key);
}

FL_DEFINE_CLEANUP(struct ota_key, ota_key_free)

static int pubkey_der(const struct ota_key *key, uint8_t buf[PUBKEY_DER_MAX], const uint8_t **ret,
		      size_t *ret_len)
{
	/* mbedtls_pk_write_pubkey_der takes a non-const context but only reads. */
	int n = mbedtls_pk_write_pubkey_der((mbedtls_pk_context *)&key->pk, buf, PUBKEY_DER_MAX);
	if (n <= 0)
		return -FL_EKEY;
	*ret = buf + PUBKEY_DER_MAX - n; /* written at the end of the buffer */
	*ret_len = (size_t)n;
	return 0;
}

/* Check the key is EC P-256 and compute its keyid. */
static int key_finish(struct ota_key *k)
{
	if (mbedtls_pk_get_type(&k->pk) != MBEDTLS_PK_ECKEY)
		return -FL_EKEY;
	const mbedtls_ecp_keypair *ec = mbedtls_pk_ec(k->pk);
	if (!ec || ec->grp.id != MBEDTLS_ECP_DP_SECP256R1)
		return -FL_EKEY;
	if (mbedtls_ecp_check_pubkey(&ec->grp, &ec->Q) != 0)
		return -FL_EKEY;
	uint8_t buf[PUBKEY_DER_MAX];
	const uint8_t *der;
	size_t der_len;
	int r = pubkey_der(k, buf, &der, &der_len);
	if (r < 0)
		return r;
	uint8_t digest[FL_SHA256_LEN];
	fl_sha256(der, der_len, digest);
	fl_hex_encode(digest, sizeof(digest), k->keyid);
	return 0;
}

int ota_key_generate(struct ota_key **ret)
{
	_cleanup_(ota_key_freep) struct ota_key *k = key_alloc();
	if (!k)
		return -ENOMEM;
	struct rng rng;
	int r = rng_init(&rng);
	if (r < 0)
		return r;
	r = mbedtls_pk_setup(&k->pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
	if (r == 0)
		r = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(k->pk),
					mbedtls_ctr_drbg_random, &rng.drbg);
	rng_free(&rng);
	if (r != 0)
		return r == MBEDTLS_ERR_PK_ALLOC_FAILED ? -ENOMEM : -FL_EKEY;
	k->has_private = true;
	r = key_finish(k);
	if (r < 0)
		return r;
	*ret = fl_steal_ptr(k);
	return 0;
}

/* mbedTLS wants PEM input NUL-terminated with the NUL counted in the length. */
static int parse_buf(const void *buf, size_t len, bool private, struct ota_key **ret)
{
	if (len == 0)
		return -FL_EKEY;
	if (len > OTA_KEY_FILE_MAX_BYTES)
		return -FL_ETOOBIG;
	_cleanup_free_ unsigned char *copy = malloc(len + 1);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, buf, len);
	copy[len] = 0;
	size_t n = len;
	if (memmem(copy, len, "-----BEGIN", 10))
		n = len + 1;

	_cleanup_(ota_key_freep) struct ota_key *k = key_alloc();
	if (!k)
		return -ENOMEM;
	int r;
	if (private) {
		r = mbedtls_pk_parse_key(&k->pk, copy, n, NULL, 0);
		k->has_private = (r == 0);
	} else {
		r = mbedtls_pk_parse_public_key(&k->pk, copy, n);
		if (r != 0) {
			/* A private key file also carries the public key. */
			mbedtls_pk_free(&k->pk);
			mbedtls_pk_init(&k->pk);
			r = mbedtls_pk_parse_key(&k->pk, copy, n, NULL, 0);
		}
	}
	mbedtls_platform_zeroize(copy, len + 1);
	if (r != 0)
		return -FL_EKEY;
	r = key_finish(k);
	if (r < 0)
		return r;
	if (!private && mbedtls_pk_ec(k->pk)) {
		/* Drop the private scalar if a private key file was given. */
		mbedtls_mpi_free(&mbedtls_pk_ec(k->pk)->d);
		mbedtls_mpi_init(&mbedtls_pk_ec(k->pk)->d);
		k->has_private = false;
	}
	*ret = fl_steal_ptr(k);
	return 0;
}

int ota_key_parse_public(const void *buf, size_t len, struct ota_key **ret)
{
	return parse_buf(buf, len, false, ret);
}

static int load_file(const char *path, bool private, struct ota_key **ret)
{
	char *data = NULL;
	size_t len = 0;
	int r = fl_read_file(path, OTA_KEY_FILE_MAX_BYTES, &data, &len);
	if (r < 0)
		return r;
	r = parse_buf(data, len, private, ret);
	mbedtls_platform_zeroize(data, len);
	free(data);
	return r;
}

int ota_key_load_private(const char *path, struct ota_key **ret)
{
	return load_file(path, true, ret);
}

int ota_key_load_public(const char *path, struct ota_key **ret)
{
	return load_file(path, false, ret);
}

int ota_key_save_private(const struct ota_key *key, const char *path)
{
	if (!key->has_private)
		return -FL_EKEY;
	unsigned char pem[PEM_MAX];
	if (mbedtls_pk_write_key_pem((mbedtls_pk_context *)&key->pk, pem, sizeof(pem)) != 0)
		return -FL_EKEY;
	int r = fl_write_file_atomic(path, pem, strlen((char *)pem), 0600);
	mbedtls_platform_zeroize(pem, sizeof(pem));
	return r;
}

int ota_key_public_pem(const struct ota_key *key, char **ret)
{
	unsigned char pem[PEM_MAX];
	if (mbedtls_pk_write_pubkey_pem((mbedtls_pk_context *)&key->pk, pem, sizeof(pem)) != 0)
		return -FL_EKEY;
	char *s = strdup((char *)pem);
	if (!s)
		return -ENOMEM;
	*ret = s;
	return 0;
}

int ota_key_save_public(const struct ota_key *key, const char *path)
{
	_cleanup_free_ char *pem = NULL;
	int r = ota_key_public_pem(key, &pem);
	if (r < 0)
		return r;
	return fl_write_file_atomic(path, pem, strlen(pem), 0644);
}

int ota_key_public_der(const struct ota_key *key, uint8_t **ret, size_t *ret_len)
{
	uint8_t buf[PUBKEY_DER_MAX];
	const uint8_t *der;
	size_t len;
	int r = pubkey_der(key, buf, &der, &len);
	if (r < 0)
		return r;
	uint8_t *out = malloc(len);
	if (!out)
		return -ENOMEM;
	memcpy(out, der, len);
	*ret = out;
	*ret_len = len;
	return 0;
}

const char *ota_key_id(const struct ota_key *key)
{
	return key->keyid;
}

bool ota_key_has_private(const struct ota_key *key)
{
	return key->has_private;
}

int ota_key_sign_digest(const struct ota_key *key, const uint8_t digest[32], uint8_t **ret_sig,
			size_t *ret_len)
{
	if (!key->has_private)
		return -FL_EKEY;
	struct rng rng;
	int r = rng_init(&rng);
	if (r < 0)
		return r;
	unsigned char sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
	size_t len = 0;
	struct ota_key *k = (struct ota_key *)key;
	pthread_mutex_lock(&k->lock);
	r = mbedtls_pk_sign(&k->pk, MBEDTLS_MD_SHA256, digest, 32, sig, &len,
			    mbedtls_ctr_drbg_random, &rng.drbg);
	pthread_mutex_unlock(&k->lock);
	rng_free(&rng);
	if (r != 0 || len == 0 || len > OTA_SIG_MAX_BYTES)
		return -FL_EKEY;
	uint8_t *out = malloc(len);
	if (!out)
		return -ENOMEM;
	memcpy(out, sig, len);
	*ret_sig = out;
	*ret_len = len;
	return 0;
}

int ota_key_sign(const struct ota_key *key, const void *data, size_t len, uint8_t **ret_sig,
		 size_t *ret_len)
{
	uint8_t digest[FL_SHA256_LEN];
	fl_sha256(data, len, digest);
	return ota_key_sign_digest(key, digest, ret_sig, ret_len);
}

int ota_key_verify_digest(const struct ota_key *key, const uint8_t digest[32], const uint8_t *sig,
			  size_t sig_len)
{
	if (!sig || sig_len == 0 || sig_len > OTA_SIG_MAX_BYTES)
		return -FL_EBADSIG;
	struct ota_key *k = (struct ota_key *)key;
	pthread_mutex_lock(&k->lock);
	int r = mbedtls_pk_verify(&k->pk, MBEDTLS_MD_SHA256, digest, 32, sig, sig_len);
	pthread_mutex_unlock(&k->lock);
	return r == 0 ? 0 : -FL_EBADSIG;
}

int ota_key_verify(const struct ota_key *key, const void *data, size_t len, const uint8_t *sig,
		   size_t sig_len)
{
	uint8_t digest[FL_SHA256_LEN];
	fl_sha256(data, len, digest);
	return ota_key_verify_digest(key, digest, sig, sig_len);
}
