package dev.dtconvert.demo

import android.content.Context
import android.security.keystore.KeyGenParameterSpec
import android.security.keystore.KeyProperties
import java.io.File
import java.security.GeneralSecurityException
import java.security.KeyStore
import javax.crypto.Cipher
import javax.crypto.KeyGenerator
import javax.crypto.SecretKey
import javax.crypto.spec.GCMParameterSpec

/**
 * The bearer token for `dtconvert serve --token-file`, typed by the user, never built into the app.
 *
 * Stored encrypted (AES-GCM) under a key that lives in the Android Keystore and never leaves it, in
 * a file under `noBackupFilesDir`: another app, a backup or a copied data folder gets ciphertext
 * only. A file that no longer decrypts (the key was reset) reads as no token.
 */
class ServerTokenStore(context: Context) {
    private val file = File(context.noBackupFilesDir, FILE_NAME)

    /** The saved token, or null. */
    fun read(): String? {
        if (!file.isFile) return null
        return try {
            // [IV length][tag length in bytes][IV][ciphertext and tag], as write() stores it.
            val stored = file.readBytes()
            if (stored.size < HEADER_BYTES) return null
            val ivBytes = stored[0].toInt()
            val tagBits = stored[1].toInt() * Byte.SIZE_BITS
            val sealedAt = HEADER_BYTES + ivBytes
            if (ivBytes < 1 || stored.size <= sealedAt) return null
            val cipher = Cipher.getInstance(TRANSFORMATION)
            cipher.init(Cipher.DECRYPT_MODE, key(), GCMParameterSpec(tagBits, stored, HEADER_BYTES, ivBytes))
            String(cipher.doFinal(stored, sealedAt, stored.size - sealedAt), Charsets.UTF_8)
        } catch (e: GeneralSecurityException) {
            null
        } catch (e: IllegalArgumentException) {
            null
        }
    }

    /** Save [token]; null or blank removes it. */
    fun write(token: String?) {
        val value = token?.trim().orEmpty()
        if (value.isEmpty()) {
            file.delete()
            return
        }
        val cipher = Cipher.getInstance(TRANSFORMATION)
        // The Keystore picks the IV (a caller-chosen one is refused); its length and the tag's are stored with it.
        cipher.init(Cipher.ENCRYPT_MODE, key())
        val gcm = cipher.parameters.getParameterSpec(GCMParameterSpec::class.java)
        val header = byteArrayOf(gcm.iv.size.toByte(), (gcm.tLen / Byte.SIZE_BITS).toByte())
        val partial = File(file.parentFile, "$FILE_NAME.partial")
        partial.writeBytes(header + gcm.iv + cipher.doFinal(value.toByteArray(Charsets.UTF_8)))
        if (!partial.renameTo(file)) throw java.io.IOException("cannot move $partial to $file")
    }

    private fun key(): SecretKey {
        val keyStore = KeyStore.getInstance(KEYSTORE).apply { load(null) }
        (keyStore.getEntry(KEY_ALIAS, null) as? KeyStore.SecretKeyEntry)?.let { return it.secretKey }
        val generator = KeyGenerator.getInstance(KeyProperties.KEY_ALGORITHM_AES, KEYSTORE)
        generator.init(
            KeyGenParameterSpec.Builder(KEY_ALIAS, KeyProperties.PURPOSE_ENCRYPT or KeyProperties.PURPOSE_DECRYPT)
                .setBlockModes(KeyProperties.BLOCK_MODE_GCM)
                .setEncryptionPaddings(KeyProperties.ENCRYPTION_PADDING_NONE)
                .build(),
        )
        return generator.generateKey()
    }

    private companion object {
        const val KEYSTORE = "AndroidKeyStore"
        const val KEY_ALIAS = "dtconvert_server_token"
        const val FILE_NAME = "server_token.bin"
        const val TRANSFORMATION = "AES/GCM/NoPadding"
        const val HEADER_BYTES = 2
    }
}
