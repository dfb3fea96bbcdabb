#ifndef PP_COPENSSL_SHIM_H
#define PP_COPENSSL_SHIM_H
#include <openssl/sha.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/md5.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <string.h>
#include <stdio.h>

// TLS 1.3 with an external pre-shared key (the cluster key) and no certificates.
// Swift does not import OpenSSL's function-like macros, and C callbacks are simpler
// here than @convention(c) closures: this header holds both. Everything is static
// inline and keeps no static state, so each Swift module that imports it may carry
// its own copy.

/// The key and identity a context offers or accepts. Owned by Swift; lives as long
/// as the SSL_CTX that points at it (its app data).
typedef struct pp_tls_psk {
    unsigned char key[32];
    char identity[64];
} pp_tls_psk;

/// Per-connection scratch: the identity a client offered (for the server's log).
typedef struct pp_tls_conn {
    char offered_identity[64];
} pp_tls_conn;

static inline unsigned int pp_tls_server_psk_cb(SSL *ssl, const char *identity, unsigned char *psk, unsigned int max_psk_len) {
    pp_tls_psk *p = (pp_tls_psk *)SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), 0);
    pp_tls_conn *c = (pp_tls_conn *)SSL_get_ex_data(ssl, 0);
    if (c != NULL && identity != NULL) {
        size_t n = strnlen(identity, sizeof(c->offered_identity) - 1);
        memcpy(c->offered_identity, identity, n);
        c->offered_identity[n] = 0;
    }
    if (p == NULL || identity == NULL || strcmp(identity, p->identity) != 0 || max_psk_len < sizeof(p->key)) return 0;
    memcpy(psk, p->key, sizeof(p->key));
    return (unsigned int)sizeof(p->key);
}

static inline unsigned int pp_tls_client_psk_cb(SSL *ssl, const char *hint, char *identity, unsigned int max_identity_len, unsigned char *psk, unsigned int max_psk_len) {
    (void)hint;
    pp_tls_psk *p = (pp_tls_psk *)SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), 0);
    if (p == NULL || max_psk_len < sizeof(p->key)) return 0;
    size_t n = strlen(p->identity);
    if (n + 1 > max_identity_len) return 0;
    memcpy(identity, p->identity, n + 1);
    memcpy(psk, p->key, sizeof(p->key));
    return (unsigned int)sizeof(p->key);
}

/// A TLS 1.3-only context keyed by `psk`: AES-128-GCM or ChaCha20-Poly1305 (both
/// SHA-256, as an external PSK requires), X25519 or P-256 ephemeral keys (OpenSSL
/// offers only psk_dhe_ke: forward secrecy), no session tickets, no certificates.
/// A client verifies peers' certificates against no CA at all, so a handshake
/// without the PSK cannot succeed either way. NULL on failure.
static inline SSL_CTX *pp_tls_ctx_new(int server, pp_tls_psk *psk) {
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (ctx == NULL) return NULL;
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1
        || SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1
        || SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256") != 1
        || SSL_CTX_set1_groups_list(ctx, "X25519:P-256") != 1
        || SSL_CTX_set_ex_data(ctx, 0, psk) != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (server) {
        SSL_CTX_set_psk_server_callback(ctx, pp_tls_server_psk_cb);
    } else {
        SSL_CTX_set_psk_client_callback(ctx, pp_tls_client_psk_cb);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    return ctx;
}

/// A connection on `ctx` with two memory BIOs: `*in` receives ciphertext from the
/// network, `*out` holds ciphertext to send. NULL on failure.
static inline SSL *pp_tls_new(SSL_CTX *ctx, int server, pp_tls_conn *conn, BIO **in, BIO **out) {
    SSL *ssl = SSL_new(ctx);
    if (ssl == NULL) return NULL;
    BIO *r = BIO_new(BIO_s_mem());
    BIO *w = BIO_new(BIO_s_mem());
    if (r == NULL || w == NULL) {
        BIO_free(r);
        BIO_free(w);
        SSL_free(ssl);
        return NULL;
    }
    BIO_set_mem_eof_return(r, -1);
    BIO_set_mem_eof_return(w, -1);
    SSL_set_bio(ssl, r, w);
    SSL_set_ex_data(ssl, 0, conn);
    if (server) SSL_set_accept_state(ssl); else SSL_set_connect_state(ssl);
    *in = r;
    *out = w;
    return ssl;
}

static inline size_t pp_bio_pending(BIO *b) { return (size_t)BIO_ctrl_pending(b); }

/// The oldest queued OpenSSL error as text (and the queue cleared); empty if none.
static inline void pp_tls_error_text(char *buffer, size_t size) {
    unsigned long e = ERR_get_error();
    if (e == 0) { if (size) buffer[0] = 0; return; }
    ERR_error_string_n(e, buffer, size);
    ERR_clear_error();
}

static inline const char *pp_tls_cipher_name(const SSL *ssl) {
    return SSL_CIPHER_get_name(SSL_get_current_cipher(ssl));
}

static inline int pp_tls_peer_tmp_key_bits(SSL *ssl, int *nid) {
    EVP_PKEY *key = NULL;
    if (SSL_get_peer_tmp_key(ssl, &key) != 1 || key == NULL) return 0;
    int bits = EVP_PKEY_get_bits(key);
    *nid = EVP_PKEY_get_id(key);
    EVP_PKEY_free(key);
    return bits;
}
#endif
