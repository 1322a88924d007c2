package dev.dtconvert.demo

import android.content.Context
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.net.Uri
import dev.dtconvert.demo.core.GreyImage
import java.io.IOException

/** Photos larger than this on their shorter side are decoded at 1/2, 1/4, ... to bound memory. */
private const val MAX_DECODED_SIDE = 2048

fun GreyImage.toBitmap(): Bitmap = Bitmap.createBitmap(toArgb(), width, height, Bitmap.Config.ARGB_8888)

fun Bitmap.toPhoto(): InputImage.Photo {
    val argb = IntArray(width * height)
    getPixels(argb, 0, width, 0, 0, width, height)
    return InputImage.Photo(argb, width, height, this)
}

/**
 * Decode a picked image. A 12 MP photo would take 48 MB as ARGB, so big ones are subsampled by a
 * power of two first; the resize to the model's input is then exactly the manifest's.
 */
fun decodeImage(context: Context, uri: Uri): Bitmap {
    val resolver = context.contentResolver
    val bounds = BitmapFactory.Options().apply { inJustDecodeBounds = true }
    resolver.openInputStream(uri)?.use { BitmapFactory.decodeStream(it, null, bounds) } ?: throw IOException("cannot open $uri")
    if (bounds.outWidth <= 0 || bounds.outHeight <= 0) throw IOException("$uri is not an image this phone can decode")
    var sample = 1
    while (minOf(bounds.outWidth, bounds.outHeight) / sample > MAX_DECODED_SIDE) sample *= 2
    val options = BitmapFactory.Options().apply {
        inSampleSize = sample
        inPreferredConfig = Bitmap.Config.ARGB_8888
    }
    return resolver.openInputStream(uri)?.use { BitmapFactory.decodeStream(it, null, options) }
        ?: throw IOException("$uri is not an image this phone can decode")
}
